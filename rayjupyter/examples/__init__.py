"""Small runnable examples: ``python -m rayjupyter.examples.quickstart``."""
