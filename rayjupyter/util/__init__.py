"""Ray's util layer: joblib backend, Executor, Pool, ActorPool and the state API."""
