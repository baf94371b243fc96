"""Search spaces and searchers as plain objects: numbers in, configs out, no cluster."""

from __future__ import annotations

import math
import random

import pytest

from rayjupyter import tune
from rayjupyter.tune import variants
from rayjupyter.tune.search import BasicVariantGenerator, ConcurrencyLimiter, Searcher


def draws(domain, n=400, seed=0):
    rng = random.Random(seed)
    return [domain.sample(random_state=rng) for _ in range(n)]


def test_uniform_and_quniform_stay_in_bounds_and_quantize():
    values = draws(tune.uniform(2.0, 3.0))
    assert all(2.0 <= v <= 3.0 for v in values) and len(set(values)) > 300
    quantized = draws(tune.quniform(0.0, 1.0, 0.25))
    assert set(quantized) <= {0.0, 0.25, 0.5, 0.75, 1.0} and len(set(quantized)) == 5


def test_loguniform_spreads_over_decades():
    values = draws(tune.loguniform(1e-4, 1e-1))
    assert all(1e-4 <= v <= 1e-1 for v in values)
    decades = {math.floor(math.log10(v)) for v in values}
    assert decades == {-4, -3, -2}  # a uniform draw would put ~all in the last decade
    q = draws(tune.qloguniform(1e-3, 1.0, 1e-3))
    assert all(abs(v / 1e-3 - round(v / 1e-3)) < 1e-6 for v in q)


def test_randn_has_the_given_mean_and_sd():
    values = draws(tune.randn(5.0, 2.0), n=4000)
    mean = sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
    assert abs(mean - 5.0) < 0.15 and abs(sd - 2.0) < 0.15
    assert all(v == round(v) for v in draws(tune.qrandn(0, 3, 1.0)))


def test_randint_excludes_upper_and_qrandint_includes_it():
    assert set(draws(tune.randint(0, 4))) == {0, 1, 2, 3}
    assert set(draws(tune.qrandint(0, 10, 5))) == {0, 5, 10}
    logs = draws(tune.lograndint(1, 1000))
    assert all(1 <= v < 1000 and isinstance(v, int) for v in logs)
    assert sum(v < 10 for v in logs) > 80  # a third of the draws, not 1%


def test_choice_and_invalid_bounds():
    assert set(draws(tune.choice(["a", "b", "c"]))) == {"a", "b", "c"}
    with pytest.raises(ValueError, match="lower < upper"):
        tune.uniform(1, 1)
    with pytest.raises(ValueError, match="lower > 0"):
        tune.loguniform(0, 1)
    with pytest.raises(ValueError, match="at least one"):
        tune.choice([])


def test_sample_from_sees_the_values_drawn_before_it():
    space = {
        "a": tune.randint(1, 10),
        "nested": {"b": tune.sample_from(lambda spec: spec.config.a * 2)},
        "c": tune.sample_from(lambda: 7),
    }
    config = variants.resolve(space, random.Random(1))
    assert config["nested"]["b"] == 2 * config["a"] and config["c"] == 7


def make(space, num_samples=1, **kwargs):
    gen = BasicVariantGenerator(**kwargs)
    gen.set_search_properties("m", "max", space, num_samples=num_samples)
    out = []
    while (config := gen.suggest(f"t{len(out)}")) != Searcher.FINISHED:
        assert config is not None
        out.append(config)
    return out


def test_grid_is_crossed_and_repeated_num_samples_times():
    space = {
        "lr": tune.grid_search([0.1, 0.01]),
        "net": {"layers": tune.grid_search([1, 2, 3])},
        "seed": tune.randint(0, 10**9),
        "fixed": [1, {"x": 2}],
    }
    configs = make(space, num_samples=2)
    assert len(configs) == 12
    points = [(c["lr"], c["net"]["layers"]) for c in configs]
    assert sorted(set(points)) == sorted((a, b) for a in (0.1, 0.01) for b in (1, 2, 3))
    assert all(points.count(p) == 2 for p in set(points))
    assert len({c["seed"] for c in configs}) == 12  # each variant draws afresh
    assert all(c["fixed"] == [1, {"x": 2}] for c in configs)


def test_seeded_generator_repeats_its_sequence_and_another_seed_differs():
    space = {"x": tune.uniform(0, 1), "k": tune.choice([1, 2, 3])}
    assert make(space, 5, random_state=3) == make(space, 5, random_state=3)
    assert make(space, 5, random_state=3) != make(space, 5, random_state=4)


def test_points_to_evaluate_come_first_then_samples():
    configs = make({"x": tune.uniform(0, 1), "y": 1}, 3, points_to_evaluate=[{"x": 0.5}])
    assert len(configs) == 3 and configs[0] == {"x": 0.5, "y": 1}  # the point is a sample
    more = make({"x": tune.uniform(0, 1)}, 1, points_to_evaluate=[{"x": 0.1}, {"x": 0.2}])
    assert [c["x"] for c in more] == [0.1, 0.2]
    grid = {"g": tune.grid_search([1, 2, 3]), "x": tune.uniform(0, 1)}
    fixed = make(grid, 2, points_to_evaluate=[{"g": 2, "x": 0.5}])
    assert len(fixed) == 1 + 3 and fixed[0] == {"g": 2, "x": 0.5}  # Ray's count


def test_constant_grid_search_shares_the_random_values_across_the_grid():
    space = {"g": tune.grid_search([1, 2, 3]), "x": tune.uniform(0, 1)}
    configs = make(space, 1, constant_grid_search=True, random_state=0)
    assert len({c["x"] for c in configs}) == 1


def test_concurrency_limiter_holds_suggestions_until_trials_complete():
    gen = BasicVariantGenerator(random_state=0)
    limited = ConcurrencyLimiter(gen, max_concurrent=2)
    limited.set_search_properties("m", "max", {"x": tune.uniform(0, 1)}, num_samples=5)
    assert isinstance(limited.suggest("a"), dict) and isinstance(limited.suggest("b"), dict)
    assert limited.suggest("c") is None
    limited.on_trial_complete("a", {"m": 1})
    assert isinstance(limited.suggest("c"), dict)
    with pytest.raises(ValueError, match="at least 1"):
        ConcurrencyLimiter(gen, 0)


def test_optuna_search_learns_toward_the_optimum():
    pytest.importorskip("optuna")
    from rayjupyter.tune.search.optuna import OptunaSearch

    search = OptunaSearch(seed=0)
    space = {"x": tune.uniform(-10, 10), "kind": tune.choice(["a", "b"]), "n": tune.randint(1, 5)}
    search.set_search_properties("loss", "min", space)
    best = math.inf
    for i in range(40):
        config = search.suggest(str(i))
        assert isinstance(config, dict) and config["n"] in range(1, 5)
        loss = (config["x"] - 3) ** 2 + (config["kind"] == "b")
        best = min(best, loss)
        search.on_trial_complete(str(i), {"loss": loss})
    assert best < 0.5


def test_optuna_search_refuses_a_grid_and_needs_metric():
    pytest.importorskip("optuna")
    from rayjupyter.tune.search.optuna import OptunaSearch

    with pytest.raises(ValueError, match="grid_search"):
        OptunaSearch(space={"x": tune.grid_search([1, 2])})
    search = OptunaSearch(space={"x": tune.uniform(0, 1)})
    search.set_search_properties(None, None, {})
    with pytest.raises(ValueError, match="metric and mode"):
        search.suggest("t")


def test_the_public_names_are_ray_tunes():
    ray_names = {
        "Tuner", "TuneConfig", "RunConfig", "CheckpointConfig", "FailureConfig", "Checkpoint",
        "Result", "ResultGrid", "Trainable", "Stopper", "report", "get_checkpoint",
        "get_context", "with_parameters", "with_resources", "grid_search", "choice", "uniform",
        "quniform", "loguniform", "qloguniform", "randn", "qrandn", "randint", "qrandint",
        "lograndint", "sample_from", "schedulers", "search",
    }  # fmt: skip
    assert ray_names <= set(tune.__all__)
    assert all(hasattr(tune, name) for name in tune.__all__)
    assert {"ASHAScheduler", "HyperBandScheduler", "PopulationBasedTraining"} <= set(
        tune.schedulers.__all__
    )
