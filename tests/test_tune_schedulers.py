"""Schedulers as decision objects: results in, CONTINUE/PAUSE/STOP/Exploit out, no cluster."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest

from rayjupyter import tune
from rayjupyter.tune.schedulers import (
    ASHAScheduler,
    Exploit,
    FIFOScheduler,
    HyperBandScheduler,
    MedianStoppingRule,
    PopulationBasedTraining,
    TrialScheduler,
)
from rayjupyter.tune.schedulers.pbt import explore

CONTINUE, PAUSE, STOP = TrialScheduler.CONTINUE, TrialScheduler.PAUSE, TrialScheduler.STOP


def trial(tid, **config):
    return SimpleNamespace(trial_id=tid, config=config)


def test_fifo_always_continues():
    assert FIFOScheduler().on_trial_result(trial("a"), {"x": 1}) == CONTINUE


def test_asha_keeps_the_top_fraction_at_each_rung():
    asha = ASHAScheduler(metric="acc", mode="max", max_t=9, grace_period=1, reduction_factor=3)
    trials = [trial(str(i)) for i in range(6)]
    for t in trials:
        asha.on_trial_add(t)
    # rung 1: scores arrive in rising order, so each newcomer beats the cutoff...
    assert [
        asha.on_trial_result(t, {"training_iteration": 1, "acc": i})
        for i, t in enumerate(trials[:3])
    ] == [CONTINUE, CONTINUE, CONTINUE]
    # ...and a low score below the 2/3 quantile of what the rung saw stops
    assert asha.on_trial_result(trials[3], {"training_iteration": 1, "acc": 0.5}) == STOP
    assert asha.on_trial_result(trials[4], {"training_iteration": 1, "acc": 10}) == CONTINUE
    # between rungs nothing is decided; max_t stops
    assert asha.on_trial_result(trials[4], {"training_iteration": 2, "acc": 0}) == CONTINUE
    assert asha.on_trial_result(trials[4], {"training_iteration": 9, "acc": 10}) == STOP


def test_asha_min_mode_flips_the_sign_and_ignores_results_without_the_metric():
    asha = ASHAScheduler(metric="loss", mode="min", max_t=4, grace_period=1, reduction_factor=2)
    a, b = trial("a"), trial("b")
    asha.on_trial_add(a)
    asha.on_trial_add(b)
    assert asha.on_trial_result(a, {"training_iteration": 1, "loss": 1.0}) == CONTINUE
    assert asha.on_trial_result(b, {"training_iteration": 1, "loss": 5.0}) == STOP
    assert asha.on_trial_result(b, {"training_iteration": 1}) == CONTINUE


def test_asha_on_a_population_stops_most_trials_early():
    rng = random.Random(0)
    asha = ASHAScheduler(metric="m", mode="max", max_t=27, grace_period=1, reduction_factor=3)
    quality = {str(i): rng.random() for i in range(81)}
    iterations = 0
    for tid, q in quality.items():
        t = trial(tid)
        asha.on_trial_add(t)
        for it in range(1, 28):
            iterations += 1
            if asha.on_trial_result(t, {"training_iteration": it, "m": q * it}) == STOP:
                break
    assert iterations < 81 * 27 / 4


def test_asha_checks_its_arguments():
    with pytest.raises(ValueError, match="grace_period"):
        ASHAScheduler(max_t=1, grace_period=2)
    with pytest.raises(ValueError, match="reduction_factor"):
        ASHAScheduler(reduction_factor=1)
    with pytest.raises(ValueError, match="metric and mode"):
        ASHAScheduler().on_trial_add(trial("a"))


def test_median_stopping_rule_stops_below_the_median_of_running_means():
    rule = MedianStoppingRule(
        time_attr="t", metric="m", mode="max", grace_period=2, min_samples_required=2
    )
    good = [trial(f"g{i}") for i in range(3)]
    for g in good:
        rule.on_trial_add(g)
        for t in range(1, 5):
            assert rule.on_trial_result(g, {"t": t, "m": 10}) == CONTINUE
    bad = trial("bad")
    rule.on_trial_add(bad)
    assert rule.on_trial_result(bad, {"t": 1, "m": 1}) == CONTINUE  # grace period
    assert rule.on_trial_result(bad, {"t": 2, "m": 1}) == STOP
    soft = MedianStoppingRule(
        time_attr="t",
        metric="m",
        mode="max",
        grace_period=0,
        min_samples_required=1,
        hard_stop=False,
    )
    soft.on_trial_result(good[0], {"t": 1, "m": 10})
    assert soft.on_trial_result(bad, {"t": 1, "m": 1}) == PAUSE
    with pytest.raises(ValueError, match="min_time_slice"):
        MedianStoppingRule(min_time_slice=5)


def test_hyperband_pauses_at_the_budget_then_resumes_the_best_and_stops_the_rest():
    hb = HyperBandScheduler(metric="m", mode="max", max_t=9, reduction_factor=3)
    trials = [trial(str(i)) for i in range(9)]  # the first bracket (s=2) takes 9 trials
    for t in trials:
        hb.on_trial_add(t)
    decisions = [
        hb.on_trial_result(t, {"training_iteration": 1, "m": i}) for i, t in enumerate(trials)
    ]
    assert decisions[:-1] == [PAUSE] * 8
    # the last arrival completes the rung: the best 3 go on (the last is one of them)
    assert decisions[-1] == CONTINUE
    actions = dict(hb.drain_actions())
    assert {k for k, v in actions.items() if v == TrialScheduler.RESUME} == {"6", "7"}
    assert {k for k, v in actions.items() if v == STOP} == {str(i) for i in range(6)}
    assert hb.may_resume("7") and not hb.may_resume("0")
    assert hb.on_trial_result(trials[8], {"training_iteration": 2, "m": 9}) == CONTINUE
    assert hb.on_trial_result(trials[8], {"training_iteration": 3, "m": 9}) == PAUSE


def test_hyperband_halves_a_bracket_that_will_not_fill_once_no_more_trials_come():
    hb = HyperBandScheduler(metric="m", mode="max", max_t=9, reduction_factor=3)
    a, b, c = trial("a"), trial("b"), trial("c")
    for t in (a, b, c):
        hb.on_trial_add(t)
    for i, t in enumerate((a, b, c)):
        assert hb.on_trial_result(t, {"training_iteration": 1, "m": i}) == PAUSE
    hb.on_no_more_trials()
    assert dict(hb.drain_actions()) == {"c": TrialScheduler.RESUME, "a": STOP, "b": STOP}


def test_pbt_exploits_a_top_trial_and_explores_its_config():
    pbt = PopulationBasedTraining(
        time_attr="training_iteration",
        metric="m",
        mode="max",
        perturbation_interval=2,
        hyperparam_mutations={"lr": [0.001, 0.01, 0.1], "mom": tune.uniform(0.1, 0.9)},
        seed=0,
    )
    trials = [trial(str(i), lr=0.01, mom=0.5) for i in range(4)]
    for t in trials:
        pbt.on_trial_add(t)
    for t in trials:
        assert pbt.on_trial_result(t, {"training_iteration": 1, "m": 0}) == CONTINUE
    for i, t in enumerate(trials[1:], start=1):
        assert pbt.on_trial_result(t, {"training_iteration": 2, "m": i}) == CONTINUE
    decision = pbt.on_trial_result(trials[0], {"training_iteration": 2, "m": -1})
    assert isinstance(decision, Exploit) and decision.clone_from == "3"
    assert decision.new_config["lr"] in (0.001, 0.01, 0.1)
    assert decision.new_config["mom"] != 0.5 and pbt.num_perturbations == 1


def test_pbt_fills_keys_only_in_the_mutations_and_needs_mutations():
    pbt = PopulationBasedTraining(metric="m", mode="max", hyperparam_mutations={"a": [1, 2]})
    t = trial("x")
    pbt.on_trial_add(t)
    assert t.config["a"] in (1, 2)
    with pytest.raises(ValueError, match="hyperparam_mutations"):
        PopulationBasedTraining(metric="m", mode="max")


def test_explore_shifts_lists_to_a_neighbour_and_scales_numbers():
    rng = random.Random(0)
    for _ in range(50):
        new = explore(
            {"k": 2, "x": 10.0, "n": 10, "sub": {"y": 1.0}},
            {
                "k": [1, 2, 3],
                "x": tune.uniform(0, 100),
                "n": tune.randint(1, 100),
                "sub": {"y": tune.uniform(0, 1)},
            },
            0.0,
            (1.2, 0.8),
            rng,
        )
        assert new["k"] in (1, 3) and new["x"] in (12.0, 8.0) and new["n"] in (12, 8)
        assert new["sub"]["y"] in (1.2, 0.8)
