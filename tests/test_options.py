"""The option table: Ray's names and defaults, clear errors, merging and resource demand."""

from __future__ import annotations

from typing import Any

import pytest

from rayjupyter.core.options import (
    OPTIONS,
    actor_defaults,
    merge_options,
    resource_demand,
    task_defaults,
    valid_option_names,
    validate_options,
)
from rayjupyter.core.scheduling_strategies import NodeAffinitySchedulingStrategy

TASK_DEFAULTS = {
    "num_cpus": 1,
    "num_gpus": 0,
    "resources": {},
    "num_returns": 1,
    "_generator_backpressure_num_objects": None,
    "max_retries": 3,
    "max_calls": None,
    "retry_exceptions": False,
    "name": "",
    "memory": None,
    "runtime_env": None,
    "scheduling_strategy": None,
    "placement_group": "default",
    "placement_group_bundle_index": -1,
    "placement_group_capture_child_tasks": None,
}
ACTOR_DEFAULTS = {
    "num_cpus": None,
    "num_gpus": 0,
    "resources": {},
    "name": None,
    "namespace": None,
    "lifetime": None,
    "get_if_exists": False,
    "max_restarts": 0,
    "max_task_retries": 0,
    "max_concurrency": None,
    "concurrency_groups": None,
    "max_pending_calls": -1,
    "memory": None,
    "runtime_env": None,
    "scheduling_strategy": None,
    "placement_group": "default",
    "placement_group_bundle_index": -1,
    "placement_group_capture_child_tasks": None,
}


def test_task_defaults_are_rays() -> None:
    assert task_defaults() == TASK_DEFAULTS


def test_actor_defaults_are_rays() -> None:
    assert actor_defaults() == ACTOR_DEFAULTS


def test_defaults_are_fresh_copies() -> None:
    task_defaults()["resources"]["custom"] = 1
    assert task_defaults()["resources"] == {}


@pytest.mark.parametrize("for_actor", [False, True])
def test_every_default_passes_its_own_check(for_actor: bool) -> None:
    defaults = actor_defaults() if for_actor else task_defaults()
    assert validate_options(defaults, for_actor=for_actor) == defaults
    for name in defaults:
        assert OPTIONS[name].doc


def test_unknown_option_lists_the_valid_ones_sorted() -> None:
    with pytest.raises(ValueError) as info:
        validate_options({"num_cpu": 1}, for_actor=False)
    message = str(info.value)
    assert "'num_cpu'" in message
    listed = message.split("valid options are: ", 1)[1].split(", ")
    assert listed == sorted(TASK_DEFAULTS)
    assert listed == valid_option_names(for_actor=False)


@pytest.mark.parametrize(
    ("name", "for_actor"),
    [("max_restarts", False), ("lifetime", False), ("num_returns", True), ("max_retries", True)],
)
def test_option_of_the_other_kind_is_unknown(name: str, for_actor: bool) -> None:
    with pytest.raises(ValueError, match="valid options are"):
        validate_options({name: 1}, for_actor=for_actor)


@pytest.mark.parametrize(
    ("options", "error", "fragment"),
    [
        ({"num_cpus": -1}, ValueError, "num_cpus must be a finite number >= 0"),
        ({"num_cpus": "2"}, TypeError, "num_cpus must be a number"),
        ({"num_cpus": True}, TypeError, "num_cpus must be a number"),
        ({"num_cpus": 0.00001}, ValueError, "cannot be finer than 0.0001"),
        ({"num_gpus": float("nan")}, ValueError, "num_gpus must be a finite number"),
        ({"num_gpus": float("inf")}, ValueError, "num_gpus must be a finite number"),
        ({"memory": -5}, ValueError, "memory must be a finite number >= 0"),
        ({"num_returns": -1}, ValueError, "num_returns must be >= 0"),
        ({"num_returns": 1.5}, TypeError, "num_returns must be an integer"),
        ({"num_returns": "many"}, ValueError, "'streaming' or 'dynamic'"),
        ({"_generator_backpressure_num_objects": 0}, ValueError, "give a number >= 1"),
        ({"max_retries": -2}, ValueError, "max_retries must be >= -1 (-1 retries forever)"),
        ({"max_retries": 2.0}, TypeError, "max_retries must be an integer"),
        ({"resources": {"CPU": 1}}, ValueError, "use num_cpus= instead"),
        ({"resources": {"GPU": 1}}, ValueError, "use num_gpus= instead"),
        ({"resources": {"memory": 1}}, ValueError, "use memory= instead"),
        ({"resources": {"x": -1}}, ValueError, "resources['x'] must be a finite number >= 0"),
        ({"resources": {1: 1}}, TypeError, "keys must be non-empty strings"),
        ({"resources": [("x", 1)]}, TypeError, "resources must be a dict"),
        ({"retry_exceptions": "yes"}, TypeError, "list of exception classes"),
        ({"retry_exceptions": [int]}, TypeError, "list of exception classes"),
        ({"name": 5}, TypeError, "name must be a string"),
        ({"runtime_env": "conda"}, TypeError, "runtime_env must be a dict"),
        ({"scheduling_strategy": "FOO"}, ValueError, "'DEFAULT', 'SPREAD'"),
        ({"scheduling_strategy": 3}, TypeError, "scheduling strategy object"),
        ({"scheduling_strategy": object()}, TypeError, "NodeAffinitySchedulingStrategy"),
        ({"placement_group": "mine"}, TypeError, "must be a PlacementGroup"),
        ({"placement_group_bundle_index": -2}, ValueError, "-1 means any bundle"),
    ],
)
def test_bad_task_values(options: dict[str, Any], error: type[Exception], fragment: str) -> None:
    with pytest.raises(error) as info:
        validate_options(options, for_actor=False)
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("options", "error", "fragment"),
    [
        ({"lifetime": "forever"}, ValueError, "lifetime must be one of"),
        ({"max_concurrency": 0}, ValueError, "max_concurrency must be >= 1"),
        ({"max_restarts": -2}, ValueError, "max_restarts must be >= -1"),
        ({"get_if_exists": 1}, TypeError, "get_if_exists must be True or False"),
        ({"get_if_exists": True}, ValueError, "needs name="),
        ({"namespace": 3}, TypeError, "namespace must be a string"),
    ],
)
def test_bad_actor_values(options: dict[str, Any], error: type[Exception], fragment: str) -> None:
    with pytest.raises(error) as info:
        validate_options(options, for_actor=True)
    assert fragment in str(info.value)


def test_good_values_are_normalized() -> None:
    strategy = NodeAffinitySchedulingStrategy("ab" * 8, soft=True)
    checked = validate_options(
        {
            "num_cpus": 0.5,
            "num_gpus": 0.25,
            "resources": {"accelerator": 2},
            "max_retries": -1,
            "retry_exceptions": [ValueError, KeyError],
            "num_returns": 0,
            "scheduling_strategy": strategy,
        },
        for_actor=False,
    )
    assert checked["num_cpus"] == 0.5
    assert checked["retry_exceptions"] == (ValueError, KeyError)
    assert checked["scheduling_strategy"] is strategy
    assert validate_options({"get_if_exists": True, "name": "a"}, for_actor=True)["name"] == "a"
    assert validate_options({"lifetime": "detached"}, for_actor=True) == {"lifetime": "detached"}


def test_merge_overrides_without_touching_base() -> None:
    base = task_defaults()
    merged = merge_options(base, {"num_cpus": 2, "resources": {"x": 1}}, for_actor=False)
    assert merged["num_cpus"] == 2
    assert merged["resources"] == {"x": 1}
    assert base == TASK_DEFAULTS
    again = merge_options(merged, {"num_returns": 2}, for_actor=False)
    assert (again["num_cpus"], again["num_returns"]) == (2, 2)


def test_merge_none_resets_to_the_default() -> None:
    custom = merge_options(task_defaults(), {"num_cpus": 3}, for_actor=False)
    assert merge_options(custom, {"num_cpus": None}, for_actor=False)["num_cpus"] == 1


def test_merge_validates_overrides() -> None:
    with pytest.raises(ValueError, match="valid options are"):
        merge_options(task_defaults(), {"bogus": 1}, for_actor=False)
    with pytest.raises(ValueError, match="num_cpus"):
        merge_options(task_defaults(), {"num_cpus": -1}, for_actor=False)


def test_resource_demand_drops_zeros_and_keeps_custom() -> None:
    assert resource_demand(task_defaults()) == {"CPU": 1.0}
    options = merge_options(
        task_defaults(),
        {"num_cpus": 0, "num_gpus": 0.5, "resources": {"x": 2, "unused": 0}},
        for_actor=False,
    )
    assert resource_demand(options) == {"GPU": 0.5, "x": 2.0}
    assert all(isinstance(v, float) for v in resource_demand(options).values())


def test_actor_demand_places_with_one_cpu_and_runs_with_none() -> None:
    options = actor_defaults()
    assert resource_demand(options) == {}
    assert resource_demand(options, for_placement=True) == {"CPU": 1.0}
    pinned = merge_options(options, {"num_cpus": 2}, for_actor=True)
    assert resource_demand(pinned) == resource_demand(pinned, for_placement=True) == {"CPU": 2.0}


def test_object_store_memory_on_an_actor_warns_and_is_dropped_as_in_ray() -> None:
    """Ported actors that still ask for it keep working (Ray deprecated it, not refused)."""
    with pytest.warns(DeprecationWarning, match="object_store_memory= on an actor"):
        checked = validate_options({"object_store_memory": 1, "num_cpus": 1}, for_actor=True)
    assert checked == {"num_cpus": 1}
    with pytest.raises(ValueError, match="Invalid option 'object_store_memory'"):
        validate_options({"object_store_memory": 1}, for_actor=False)  # tasks never took it
