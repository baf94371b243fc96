"""Tasks on a real local cluster: chains, trees, nesting, options, wait and get."""

from __future__ import annotations

import contextlib
import time

import pytest
from helpers import wait_for_condition

import rayjupyter as rj
from rayjupyter.exceptions import GetTimeoutError

pytestmark = pytest.mark.usefixtures("shared_cluster")


@rj.remote
def add(a, b):
    return a + b


@rj.remote
def identity(x):
    return x


@rj.remote
def sleep_then(seconds, value):
    time.sleep(seconds)
    return value


@rj.remote
def fan_out(depth, width=2):
    """Submits and gets tasks from inside a task, `depth` levels deep."""
    if depth == 0:
        return 1
    return sum(rj.get([fan_out.remote(depth - 1, width) for _ in range(width)], timeout=60))


def test_seed_chain_and_tree_of_add():
    chain = rj.put(0)
    for i in range(1, 11):
        chain = add.remote(chain, i)
    assert rj.get(chain, timeout=30) == 55

    leaves = [rj.put(i) for i in range(16)]
    while len(leaves) > 1:
        leaves = [add.remote(a, b) for a, b in zip(leaves[::2], leaves[1::2], strict=False)]
    assert rj.get(leaves[0], timeout=30) == sum(range(16))


def test_chain_of_1000_dependent_tasks():
    ref = add.remote(0, 0)
    for _i in range(1, 1000):
        ref = add.remote(ref, 1)
    assert rj.get(ref, timeout=60) == 999


def test_nested_tasks_three_levels_do_not_deadlock_two_cpus():
    # 1 + 2 + 4 + 8 tasks on 2 CPUs: every level blocks in get, lending its CPU
    assert rj.get(fan_out.remote(3), timeout=60) == 8


def test_num_returns_gives_one_ref_per_value():
    @rj.remote(num_returns=3)
    def three():
        return 1, "two", [3]

    refs = three.remote()
    assert isinstance(refs, list) and len(refs) == 3
    assert rj.get(refs, timeout=30) == [1, "two", [3]]
    assert rj.get(three.options(num_returns=1).remote(), timeout=30) == (1, "two", [3])


def test_num_returns_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="num_returns=2 but returned 3"):
        rj.get(identity.options(num_returns=2).remote([1, 2, 3]), timeout=30)


def test_refs_inside_containers_stay_refs():
    inner = rj.put(41)

    @rj.remote
    def unwrap(items):
        assert isinstance(items[0], rj.ObjectRef)
        return rj.get(items[0], timeout=30) + 1

    assert rj.get(unwrap.remote([inner]), timeout=30) == 42
    # a top-level ref is resolved to its value, as a keyword argument too
    assert rj.get(identity.remote(x=inner), timeout=30) == 41


def test_large_argument_travels_through_the_object_store():
    payload = bytes(range(256)) * 4096  # 1 MiB: above the inline threshold
    assert rj.get(identity.remote(payload), timeout=30) == payload


def test_get_list_keeps_order_and_single_ref_gives_value():
    refs = [sleep_then.remote(0.05 * (3 - i), i) for i in range(3)]
    assert rj.get(refs, timeout=30) == [0, 1, 2]
    assert rj.get(refs[1], timeout=30) == 1


def test_get_timeout_raises_get_timeout_error():
    ref = sleep_then.remote(3, "late")
    with pytest.raises(GetTimeoutError) as info:
        rj.get(ref, timeout=0.2)
    assert isinstance(info.value, TimeoutError)
    assert rj.get(ref, timeout=30) == "late"


def test_wait_returns_ready_and_not_ready_in_input_order():
    slow = sleep_then.remote(5, "slow")
    fast = [identity.remote(i) for i in range(3)]
    refs = [slow, *fast]
    ready, not_ready = rj.wait(refs, num_returns=3, timeout=30)
    assert ready == fast and not_ready == [slow]

    ready, not_ready = rj.wait(refs, num_returns=4, timeout=0.2)
    assert ready == fast and not_ready == [slow]

    ready, not_ready = rj.wait([slow], timeout=0)
    assert ready == [] and not_ready == [slow]


def test_wait_rejects_bad_input():
    ref = rj.put(1)
    with pytest.raises(ValueError, match="num_returns"):
        rj.wait([ref], num_returns=2)
    with pytest.raises(ValueError, match="unique"):
        rj.wait([ref, ref])
    with pytest.raises(TypeError, match="list"):
        rj.wait(ref)


def test_unknown_option_lists_the_valid_ones():
    with pytest.raises(ValueError, match="num_cpus") as info:
        add.options(num_cpu=2)
    assert "num_cpu'" in str(info.value) and "max_retries" in str(info.value)
    with pytest.raises(ValueError, match="valid options"):

        @rj.remote(retries=1)
        def f():
            return 1


def test_remote_function_cannot_be_called_directly():
    with pytest.raises(TypeError, match=r"add\.remote\(\)"):
        add(1, 2)


def test_options_name_and_resources_are_used():
    ref = identity.options(name="renamed", num_cpus=0.5).remote(7)
    assert rj.get(ref, timeout=30) == 7


def test_cluster_resources_available_resources_and_nodes():
    total = rj.cluster_resources()
    assert total["CPU"] == 2.0
    assert "object_store_memory" in total
    ref = sleep_then.remote(2, None)
    wait_for_condition(lambda: rj.available_resources().get("CPU", 0.0) <= 1.0, timeout=10)
    rj.get(ref, timeout=30)
    nodes = rj.nodes()
    assert len(nodes) == 1 and nodes[0]["Alive"] and nodes[0]["Resources"]["CPU"] == 2.0
    assert nodes[0]["NodeManagerAddress"] == "127.0.0.1"


@rj.remote
class Mailbox:
    def __init__(self):
        self.boxed = None

    def put(self, boxed):
        self.boxed = boxed

    def take(self):
        return self.boxed


def test_task_waiting_on_work_queued_behind_it_does_not_deadlock():
    """With a long queue the node sends busy workers their next task early (prefetch). A
    running task that then waits on that very task must get it back, not wait for itself."""

    @rj.remote
    def waiter(mailbox):
        while True:
            boxed = rj.get(mailbox.take.remote(), timeout=60)
            if boxed:
                return sum(rj.get(boxed[0], timeout=60))
            time.sleep(0.005)  # busy, not blocked: the node may prefetch onto this worker

    mailbox = Mailbox.remote()
    head = waiter.remote(mailbox)
    late = [sleep_then.remote(0.02, i) for i in range(40)]  # queued behind the waiter
    mailbox.put.remote([late])
    assert rj.get(head, timeout=60) == sum(range(40))


def test_a_burst_of_short_tasks_with_cancels_in_it_settles():
    """A short function's tasks go several at a time to each busy worker (prefetch.py):
    cancelling some of them while sent ahead leaves the others, and their order, intact."""
    rj.get([add.remote(0, 0) for _ in range(20)], timeout=60)  # (it ran short here)
    refs = [add.remote(i, i) for i in range(3000)]
    cancelled = set(range(50, 3000, 97))
    for index in sorted(cancelled):
        rj.cancel(refs[index])
    for index, ref in enumerate(refs):
        if index in cancelled:  # it may have run already: its value, or the cancel
            with contextlib.suppress(rj.exceptions.TaskCancelledError):
                assert rj.get(ref, timeout=60) == 2 * index
        else:
            assert rj.get(ref, timeout=60) == 2 * index
