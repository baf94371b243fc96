"""rayjupyter.tune on a real cluster: trials as actors, schedulers acting, results,
failures, resources, checkpoints copied by PBT, and Tuner.restore after a killed driver."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import tempfile
import textwrap

import pytest
from helpers import wait_for_condition

import rayjupyter as rj
from rayjupyter import tune
from rayjupyter.tune.schedulers import ASHAScheduler, PopulationBasedTraining
from rayjupyter.tune.search import BasicVariantGenerator, Searcher

pytestmark = pytest.mark.usefixtures("shared_cluster")


def read_json(directory, name):
    with open(os.path.join(directory, name)) as f:
        return json.load(f)


def quiet(tmp_path, **kwargs):
    return tune.RunConfig(storage_path=str(tmp_path), verbose=0, **kwargs)


def quadratic(config):
    for step in range(1, 4):
        tune.report({"loss": (config["x"] - 0.3) ** 2 + config["y"] / step})


def test_fit_matches_a_plain_loop_over_the_same_seeded_samples(tmp_path):
    space = {"x": tune.uniform(0, 1), "y": tune.choice([0.0, 0.5]), "fixed": {"k": 1}}
    tuner = tune.Tuner(
        quadratic,
        param_space=space,
        tune_config=tune.TuneConfig(
            metric="loss",
            mode="min",
            num_samples=8,
            search_alg=BasicVariantGenerator(random_state=7),
        ),
        run_config=quiet(tmp_path, name="plain"),
    )
    grid = tuner.fit()
    assert len(grid) == 8 and grid.num_terminated == 8 and grid.num_errors == 0

    loop = BasicVariantGenerator(random_state=7)
    loop.set_search_properties("loss", "min", space, num_samples=8)
    configs = []
    while (config := loop.suggest(str(len(configs)))) != Searcher.FINISHED:
        configs.append(config)
    best = min(configs, key=lambda c: (c["x"] - 0.3) ** 2 + c["y"] / 3)
    result = grid.get_best_result()
    assert result.config == best
    assert result.metrics["training_iteration"] == 3 and result.metrics["done"]
    assert len(result.metrics_dataframe) == 3
    frame = grid.get_dataframe()
    assert len(frame) == 8 and "config/x" in frame.columns and "config/fixed/k" in frame.columns
    assert grid.get_best_result("loss", "max", scope="all").config != best
    assert os.path.isdir(result.path) and result.path.startswith(str(tmp_path / "plain"))


def test_asha_stops_trials_early(tmp_path):
    def climb(config):
        for step in range(1, 17):
            tune.report({"acc": config["q"] * step})

    grid = tune.Tuner(
        climb,
        param_space={"q": tune.uniform(0, 1)},
        tune_config=tune.TuneConfig(
            metric="acc",
            mode="max",
            num_samples=12,
            search_alg=BasicVariantGenerator(random_state=1),
            scheduler=ASHAScheduler(max_t=16, grace_period=1, reduction_factor=2),
        ),
        run_config=quiet(tmp_path),
    ).fit()
    iterations = sum(r.metrics["training_iteration"] for r in grid)
    assert grid.num_terminated == 12 and iterations < 12 * 16
    assert any(r.metrics["training_iteration"] < 16 for r in grid)


def test_a_failing_trial_is_recorded_and_the_others_go_on(tmp_path):
    def sometimes(config):
        tune.report({"v": 1})
        if config["x"] == 2:
            raise ValueError("x=2 is bad")
        tune.report({"v": 2})

    grid = tune.Tuner(
        sometimes,
        param_space={"x": tune.grid_search([1, 2, 3])},
        run_config=quiet(tmp_path),
    ).fit()
    assert grid.num_errors == 1 and grid.num_terminated == 2
    (error,) = grid.errors
    assert isinstance(error, ValueError) and "x=2 is bad" in str(error)
    failed = next(r for r in grid if r.error is not None)
    assert failed.config == {"x": 2} and failed.metrics["v"] == 1


def test_max_failures_retries_from_the_checkpoint(tmp_path):
    marker = tmp_path / "failed-once"

    def flaky(config):
        start = 0
        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:
            with checkpoint.as_directory() as d:
                start = read_json(d, "s.json")["step"]
        for step in range(start + 1, 6):
            if step == 4 and not marker.exists():
                marker.touch()
                raise RuntimeError("crash once")
            with tempfile.TemporaryDirectory() as d:
                with open(os.path.join(d, "s.json"), "w") as f:
                    json.dump({"step": step}, f)
                tune.report(
                    {"step": step, "start": start}, checkpoint=tune.Checkpoint.from_directory(d)
                )

    grid = tune.Tuner(
        flaky, run_config=quiet(tmp_path, failure_config=tune.FailureConfig(max_failures=1))
    ).fit()
    (result,) = grid
    assert result.error is None and result.metrics["step"] == 5
    assert result.metrics["start"] == 3 and result.metrics["training_iteration"] == 5
    with result.checkpoint.as_directory() as d:
        assert read_json(d, "s.json")["step"] == 5
    copy = result.checkpoint.to_directory(str(tmp_path / "copy"))
    assert read_json(copy, "s.json")["step"] == 5


def test_max_concurrent_trials_runs_one_at_a_time(tmp_path):
    import time

    def timed(config):
        tune.report({"t": time.time()})
        tune.report({"t": time.time()})

    grid = tune.Tuner(
        timed,
        param_space={"i": tune.grid_search([0, 1, 2, 3])},
        tune_config=tune.TuneConfig(max_concurrent_trials=1),
        run_config=quiet(tmp_path),
    ).fit()
    spans = sorted((r.history[0]["t"], r.history[-1]["t"]) for r in grid)
    assert all(prev[1] <= nxt[0] for prev, nxt in itertools.pairwise(spans))


def test_with_parameters_puts_the_object_once(tmp_path):
    from rayjupyter.util.state import list_objects

    def big_objects():
        return {o["object_id"] for o in list_objects(limit=10_000) if o["object_size"] >= 3_000_000}

    before = big_objects()
    data = b"x" * 3_000_000

    def uses(config, data):
        tune.report({"n": len(data), "id": id(data) % 1000})

    wrapped = tune.with_parameters(uses, data=data)
    grid = tune.Tuner(
        wrapped, param_space={"i": tune.grid_search(list(range(4)))}, run_config=quiet(tmp_path)
    ).fit()
    assert [r.metrics["n"] for r in grid] == [3_000_000] * 4
    assert len(big_objects() - before) == 1


class Counter(tune.Trainable):
    def setup(self, config):
        self.total = config["start"]

    def step(self):
        self.total += 1
        return {"total": self.total}

    def save_checkpoint(self, checkpoint_dir):
        return {"total": self.total}

    def load_checkpoint(self, checkpoint):
        self.total = checkpoint["total"]


def test_class_trainable_steps_and_checkpoints_with_resources(tmp_path):
    trainable = tune.with_resources(Counter, {"cpu": 0.5})
    grid = tune.Tuner(
        trainable,
        param_space={"start": tune.grid_search([0, 100])},
        run_config=quiet(
            tmp_path,
            stop={"training_iteration": 4},
            checkpoint_config=tune.CheckpointConfig(checkpoint_frequency=2, num_to_keep=1),
        ),
    ).fit()
    assert sorted(r.metrics["total"] for r in grid) == [4, 104]
    for result in grid:
        assert result.checkpoint is not None and len(result.best_checkpoints) == 1
        assert os.path.basename(result.checkpoint.path) == "checkpoint_000001"


class Lineage(tune.Trainable):
    """Remembers which trial's state it carries: the one it was created as, or the one
    whose checkpoint it loaded."""

    def setup(self, config):
        self.origin, self.steps = tune.get_context().get_trial_id(), 0

    def step(self):
        import time

        self.steps += 1
        marks = self.config["marks"]
        open(os.path.join(marks, f"{self.config['lr']}_{self.steps}"), "w").close()
        # the weakest waits until the others passed their first perturbation point
        while (
            self.config["lr"] == 0.1
            and self.steps == 3
            and not all(os.path.exists(os.path.join(marks, f"{lr}_3")) for lr in (1.0, 10.0, 100.0))
        ):
            time.sleep(0.02)  # polling a condition the other trials create
        return {"score": self.config["lr"] * self.steps, "origin": self.origin}

    def save_checkpoint(self, checkpoint_dir):
        return {"origin": self.origin, "steps": self.steps}

    def load_checkpoint(self, checkpoint):
        self.origin, self.steps = checkpoint["origin"], checkpoint["steps"]


def test_pbt_with_a_class_trainable_saves_the_source_on_demand(tmp_path):
    pbt = PopulationBasedTraining(
        time_attr="training_iteration",
        perturbation_interval=2,
        hyperparam_mutations={"lr": [0.1, 1.0, 10.0]},
        seed=0,
    )
    grid = tune.Tuner(
        tune.with_resources(Lineage, {"cpu": 0.5}),
        param_space={"lr": tune.grid_search([0.1, 1.0, 10.0, 100.0]), "marks": str(tmp_path)},
        tune_config=tune.TuneConfig(metric="score", mode="max", scheduler=pbt),
        run_config=quiet(
            tmp_path,
            stop={"training_iteration": 12},
            checkpoint_config=tune.CheckpointConfig(checkpoint_at_end=True),
        ),
    ).fit()
    assert grid.num_terminated == 4 and pbt.num_perturbations >= 1
    assert any(r.metrics["origin"] != r.metrics["trial_id"] for r in grid)


def test_pbt_copies_a_better_trials_checkpoint(tmp_path):
    import time

    def lineage(config):
        me = tune.get_context().get_trial_id()
        state = {"step": 0, "writer": me}
        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:
            with checkpoint.as_directory() as d:
                state = read_json(d, "state.json")
        loaded_from = state["writer"]
        end = 8 if checkpoint is None else state["step"] + 2  # a restored trial goes on
        while state["step"] < end:
            state["step"] += 1
            state["writer"] = me
            marks = config["marks"]
            open(os.path.join(marks, f"{config['lr']}_{state['step']}"), "w").close()
            # the weakest trial waits until the others are past their first perturbation
            # point, so the scheduler has a population to rank it against
            while (
                config["lr"] == 0.1
                and state["step"] == 3
                and not all(
                    os.path.exists(os.path.join(marks, f"{lr}_3")) for lr in (1.0, 10.0, 100.0)
                )
            ):
                time.sleep(0.02)  # polling a condition the other trials create
            with tempfile.TemporaryDirectory() as d:
                with open(os.path.join(d, "state.json"), "w") as f:
                    json.dump(state, f)
                tune.report(
                    {"score": config["lr"] * state["step"], "loaded_from": loaded_from},
                    checkpoint=tune.Checkpoint.from_directory(d),
                )

    pbt = PopulationBasedTraining(
        time_attr="training_iteration",
        perturbation_interval=2,
        hyperparam_mutations={"lr": [0.1, 1.0, 10.0, 100.0]},
        seed=0,
    )
    grid = tune.Tuner(
        tune.with_resources(lineage, {"cpu": 0.5}),
        param_space={"lr": tune.grid_search([0.1, 1.0, 10.0, 100.0]), "marks": str(tmp_path)},
        tune_config=tune.TuneConfig(metric="score", mode="max", scheduler=pbt),
        run_config=quiet(tmp_path),
    ).fit()
    assert pbt.num_perturbations >= 1 and grid.num_terminated == 4
    copied = [
        (r.metrics["trial_id"], row["loaded_from"])
        for r in grid
        for row in r.history
        if row["loaded_from"] != r.metrics["trial_id"]
    ]
    assert copied, [
        (r.metrics["trial_id"], [(h["training_iteration"], h["loaded_from"]) for h in r.history])
        for r in grid
    ]


@pytest.mark.parametrize("how", ["SIGKILL", "SIGINT"])
def test_restore_after_the_driver_is_killed_or_interrupted(shared_cluster, tmp_path, how):
    """SIGKILL: the driver dies mid-experiment. SIGINT (what a kernel interrupt sends):
    fit() stops cleanly, says how to restore, and the driver exits normally."""
    import signal

    gate = tmp_path / "gate"
    script = textwrap.dedent(
        f"""
        import json, os, signal, sys, tempfile, time
        # Ctrl-C as in a terminal: a test run started in the background (CI under a shell
        # without job control) hands its processes SIGINT ignored
        signal.signal(signal.SIGINT, signal.default_int_handler)
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        import rayjupyter as rj
        from rayjupyter import tune
        from test_tune_run import gated
        rj.init(address={shared_cluster.connect_address!r})
        tune.Tuner(
            gated,
            param_space={{"i": tune.grid_search([0, 1, 2]), "gate": {str(gate)!r}}},
            tune_config=tune.TuneConfig(max_concurrent_trials=2),
            run_config=tune.RunConfig(storage_path={str(tmp_path)!r}, name="exp", verbose=0),
        ).fit()
        """
    )
    driver = subprocess.Popen(
        [sys.executable, "-c", script], env={**os.environ}, stdout=subprocess.PIPE, text=True
    )
    path = tmp_path / "exp"
    try:

        def two_blocked():
            rows = [p / "result.json" for p in path.glob("gated_*")]
            done = [r for r in rows if r.exists() and len(r.read_text().splitlines()) >= 2]
            return len(done) >= 2 and (path / "experiment_state.pkl").exists()

        wait_for_condition(two_blocked, timeout=60)
        from rayjupyter.tune.state_file import load_experiment

        wait_for_condition(
            lambda: (
                sum(  # two trials saved with their step-2 checkpoints
                    len(t.history) >= 2 and t.checkpoint is not None
                    for t in load_experiment(str(path))["trials"]
                )
                >= 2
            ),
            timeout=30,
        )
    finally:
        os.kill(driver.pid, getattr(signal, how))
        out, _ = driver.communicate(timeout=30)
    if how == "SIGINT":
        assert driver.returncode == 0 and "Tuner.restore(" in out
    gate.touch()
    assert tune.Tuner.can_restore(str(path))
    grid = tune.Tuner.restore(str(path), trainable=gated).fit()
    assert grid.num_terminated == 3 and sorted(r.config["i"] for r in grid) == [0, 1, 2]
    assert all(r.metrics["step"] == 4 for r in grid)
    resumed = [r for r in grid if r.metrics["start"] >= 2]
    assert len(resumed) >= 2, [r.history for r in grid]  # went on from their checkpoints


def gated(config):
    """Reports twice with checkpoints, then waits at a gate file the test opens."""
    import time

    start = 0
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            start = read_json(d, "s.json")["step"]
    for step in range(start + 1, 5):
        while step == 3 and not os.path.exists(config["gate"]):
            time.sleep(0.05)  # a gate the test opens; polled, it is no timing assumption
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "s.json"), "w") as f:
                json.dump({"step": step}, f)
            tune.report(
                {"step": step, "start": start}, checkpoint=tune.Checkpoint.from_directory(d)
            )


def test_a_returned_dict_is_the_last_result(tmp_path):
    def returns(config):
        tune.report({"v": 1})
        return {"v": config["x"] * 10}

    grid = tune.Tuner(returns, param_space={"x": 2}, run_config=quiet(tmp_path)).fit()
    assert grid[0].metrics["v"] == 20 and grid[0].metrics["training_iteration"] == 2


def test_trial_name_creators_and_refused_checkpoint_options(tmp_path):
    grid = tune.Tuner(
        quadratic,
        param_space={"x": tune.grid_search([0.1, 0.2]), "y": 0.0},
        tune_config=tune.TuneConfig(
            trial_dirname_creator=lambda t: f"dir_x={t.config['x']}",
            trial_name_creator=lambda t: f"{t.trainable_name}-{t.config['x']}",
        ),
        run_config=quiet(tmp_path, name="named"),
    ).fit()
    assert sorted(os.path.basename(r.path) for r in grid) == ["dir_x=0.1", "dir_x=0.2"]
    frame = grid.get_dataframe()
    assert sorted(frame["trial_name"]) == ["quadratic-0.1", "quadratic-0.2"]
    with pytest.raises(ValueError, match="class trainables only"):
        tune.Tuner(
            quadratic,
            run_config=quiet(
                tmp_path, checkpoint_config=tune.CheckpointConfig(checkpoint_at_end=True)
            ),
        ).fit()


def test_history_in_memory_is_bounded_and_says_so(tmp_path, monkeypatch, caplog):
    from rayjupyter.tune import controller

    monkeypatch.setattr(controller, "MAX_HISTORY", 4)

    def ten(config):
        for i in range(10):
            tune.report({"i": i})

    grid = tune.Tuner(ten, run_config=quiet(tmp_path)).fit()
    assert [row["i"] for row in grid[0].history] == [6, 7, 8, 9]
    assert caplog.text.count("RAYJUPYTER_TUNE_MAX_HISTORY") == 1
    with open(os.path.join(grid[0].path, "result.json")) as f:
        assert len(f.readlines()) == 10


def test_report_outside_a_trial_says_how_to_run_it():
    with pytest.raises(RuntimeError, match="Tuner"):
        tune.report({"x": 1})
    assert tune.get_checkpoint() is None
    assert rj.is_initialized()


def checkpointed_climb(config):
    """Reports ``q * step`` for 9 steps, checkpointing its step (so pauses can resume)."""
    start = 0
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        start = read_json(checkpoint.path, "s.json")["step"]
    for step in range(start + 1, 10):
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "s.json"), "w") as f:
                json.dump({"step": step}, f)
            tune.report(
                {"acc": config["q"] * step, "start": start},
                checkpoint=tune.Checkpoint.from_directory(d),
            )


def test_hyperband_pauses_and_resumes_trials_from_their_checkpoints(tmp_path):
    from rayjupyter.tune.schedulers import HyperBandScheduler

    grid = tune.Tuner(
        checkpointed_climb,
        param_space={"q": tune.grid_search([i / 10 for i in range(1, 10)])},
        tune_config=tune.TuneConfig(
            metric="acc", mode="max", scheduler=HyperBandScheduler(max_t=9, reduction_factor=3)
        ),
        run_config=quiet(tmp_path),
    ).fit()
    assert grid.num_terminated == 9
    by_q = {r.config["q"]: r for r in grid}
    assert by_q[0.9].metrics["training_iteration"] == 9  # the best went all the way
    assert by_q[0.9].metrics["start"] > 0  # after a pause, from its checkpoint
    assert sum(r.metrics["training_iteration"] for r in grid) < 9 * 9


def test_optuna_search_median_rule_stop_and_time_budget(tmp_path):
    from rayjupyter.tune.schedulers import MedianStoppingRule
    from rayjupyter.tune.search.optuna import OptunaSearch

    grid = tune.Tuner(
        checkpointed_climb,
        param_space={"q": tune.uniform(0, 1)},
        tune_config=tune.TuneConfig(
            metric="acc",
            mode="max",
            num_samples=6,
            search_alg=OptunaSearch(seed=0),
            scheduler=MedianStoppingRule(
                time_attr="training_iteration", grace_period=2, min_samples_required=2
            ),
        ),
        run_config=quiet(tmp_path, stop={"acc": 5.0}),
    ).fit()
    assert len(grid) == 6 and grid.num_terminated == 6
    assert all(r.metrics["acc"] < 5.0 + 1 for r in grid)  # the stop dict ended the good ones

    budget = tune.Tuner(
        gated,
        param_space={"i": tune.grid_search([0, 1]), "gate": str(tmp_path / "never")},
        tune_config=tune.TuneConfig(time_budget_s=0.5),
        run_config=quiet(tmp_path),
    ).fit()
    assert budget.num_terminated == 2
    # the gate never opens: only the budget could end them, before their third step
    assert all(r.metrics.get("step", 0) <= 2 for r in budget)


def reports_its_config(config):
    """Each trial reports the values it was given, as its own process saw them."""
    tune.report({"seen": 1, **{f"v_{k}": v for k, v in config.items() if k != "nested"}})


def test_every_search_space_reaches_trials_within_its_domain(tmp_path):
    space = {
        "u": tune.uniform(-1, 1),
        "qu": tune.quniform(0, 10, 0.5),
        "lu": tune.loguniform(1e-4, 1e-1),
        "qlu": tune.qloguniform(5, 1000, 5),
        "n": tune.randn(10, 2),
        "ri": tune.randint(3, 7),
        "lri": tune.lograndint(1, 100),
        "c": tune.choice(["a", "b"]),
        "g": tune.grid_search([1, 2]),
        "s": tune.sample_from(lambda spec: spec.config.g * 10),
        "nested": {"inner": tune.uniform(5, 6)},
    }
    grid = tune.Tuner(
        reports_its_config,
        param_space=space,
        tune_config=tune.TuneConfig(
            num_samples=3, search_alg=BasicVariantGenerator(random_state=1)
        ),
        run_config=quiet(tmp_path, name="spaces"),
    ).fit()
    assert len(grid) == 6 and grid.num_errors == 0  # 3 samples x 2 grid values
    for result in grid:
        config, metrics = result.config, result.metrics
        assert -1 <= config["u"] < 1 and metrics["v_u"] == config["u"]
        assert 0 <= config["qu"] <= 10 and (config["qu"] / 0.5) == round(config["qu"] / 0.5)
        assert 1e-4 <= config["lu"] < 1e-1
        assert 5 <= config["qlu"] <= 1000 and config["qlu"] % 5 == 0
        assert isinstance(config["n"], float)
        assert 3 <= config["ri"] < 7 and isinstance(config["ri"], int)
        assert 1 <= config["lri"] < 100 and isinstance(config["lri"], int)
        assert config["c"] in ("a", "b")
        assert config["s"] == config["g"] * 10
        assert 5 <= config["nested"]["inner"] < 6
    assert sorted(r.config["g"] for r in grid) == [1, 1, 1, 2, 2, 2]
