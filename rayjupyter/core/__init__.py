"""The engine: processes, protocol, scheduling and the object store. No Jupyter imports here."""
