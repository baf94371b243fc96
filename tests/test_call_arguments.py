"""Arguments are checked at ``.remote()`` as in Ray: a call that cannot bind raises
TypeError in the caller and submits nothing (functions, actor constructors, methods)."""

from __future__ import annotations

import pytest

import rayjupyter as rj
from rayjupyter.core import signatures

pytestmark = pytest.mark.usefixtures("shared_cluster")


@rj.remote
def needs_one(x):
    return x


@rj.remote
def mixed(a, b=2, *rest, c, **extra):
    return a, b, rest, c, extra


@rj.remote
class Account:
    def __init__(self, owner, balance=0):
        self.balance = balance

    def deposit(self, amount, *, note=""):
        self.balance += amount
        return self.balance

    @staticmethod
    def add(a, b):
        return a + b

    @classmethod
    def kind(cls, label):
        return f"{cls.__name__}:{label}"


def test_a_function_called_with_wrong_arguments_raises_at_remote_and_submits_nothing():
    from rayjupyter.util.state import list_tasks

    before = len(list_tasks(limit=10**6))
    with pytest.raises(TypeError, match="missing a required argument: 'x'"):
        needs_one.remote()
    with pytest.raises(TypeError, match="too many positional arguments"):
        needs_one.remote(1, 2)
    with pytest.raises(TypeError, match="unexpected keyword argument 'y'"):
        needs_one.remote(1, y=2)
    with pytest.raises(TypeError, match="missing a required argument: 'c'"):
        mixed.options(num_cpus=1).remote(1)
    assert len(list_tasks(limit=10**6)) == before  # nothing reached the cluster
    assert rj.get(needs_one.remote(x=3), timeout=30) == 3
    assert rj.get(mixed.remote(1, 2, 3, c=4, d=5), timeout=30) == (1, 2, (3,), 4, {"d": 5})


def test_an_actor_constructor_and_its_methods_are_checked_at_remote():
    with pytest.raises(TypeError, match=r"Account.remote\(\): missing a required argument"):
        Account.remote()
    with pytest.raises(TypeError, match="too many positional arguments"):
        Account.options(name="checked-account").remote(1, 2, 3)
    account = Account.options(name="checked-account").remote("ann")
    with pytest.raises(TypeError, match=r"Account.deposit.remote\(\): missing"):
        account.deposit.remote()
    with pytest.raises(TypeError, match="too many positional arguments"):
        account.deposit.remote(1, "note")
    with pytest.raises(TypeError, match="missing a required argument: 'b'"):
        account.add.remote(1)
    with pytest.raises(TypeError, match="missing a required argument: 'label'"):
        account.kind.remote()
    assert rj.get(
        [account.deposit.remote(5, note="x"), account.add.remote(1, 2), account.kind.remote("z")],
        timeout=30,
    ) == [5, 3, "Account:z"]
    by_name = rj.get_actor("checked-account")  # a handle got from the cluster checks too
    with pytest.raises(TypeError, match="missing a required argument: 'amount'"):
        by_name.deposit.remote()

    @rj.remote
    def call_from_a_task(handle):
        try:
            handle.deposit.remote(1, 2)
        except TypeError as exc:
            return str(exc)
        return "submitted"

    assert "too many positional" in rj.get(call_from_a_task.remote(account), timeout=30)


def test_signatures_without_a_python_signature_are_not_checked():
    assert signatures.for_callable(dict) is None
    check = signatures.for_callable(lambda a, b=1: a)
    assert check is not None
    check.check("f", (1,), {})
    with pytest.raises(TypeError):
        check.check("f", (), {})
