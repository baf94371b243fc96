"""Search algorithms (``ray.tune.search``); ``OptunaSearch`` is in
``rayjupyter.tune.search.optuna`` (needs the ``tune`` extra)."""

from rayjupyter.tune.search.basic import BasicVariantGenerator, ConcurrencyLimiter, Searcher

__all__ = ["BasicVariantGenerator", "ConcurrencyLimiter", "Searcher"]
