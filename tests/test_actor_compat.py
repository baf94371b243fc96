"""Actors as Ray users know them: reprs and log prefixes, class attributes inside methods,
and ``ActorPool`` (multi-return methods, eager map, no actor twice)."""

from __future__ import annotations

import os

import pytest
from helpers import wait_for_condition

import rayjupyter as rj
from rayjupyter.exceptions import ActorDiedError
from rayjupyter.util import ActorPool

pytestmark = pytest.mark.usefixtures("shared_cluster")


@rj.remote
class Indexed:
    LIMIT = 10

    def __init__(self, index):
        self.index = index

    def __repr__(self):
        return f"Indexed(index={self.index})"

    @staticmethod
    def scale(value):
        return value * 100

    @classmethod
    def label(cls):
        return cls.__name__

    def say(self, text):
        print(text)
        return os.getpid()

    def limits(self):
        # the class's name inside its methods is the remote class: its attributes reach through
        return Indexed.LIMIT, Indexed.scale(2), Indexed.label()

    @rj.method(num_returns=2)
    def pair(self, value):
        return value, -value

    def slow_echo(self, value, path):
        import time

        while not os.path.exists(path):
            time.sleep(0.01)
        return value


def test_each_actor_repr_shows_its_own_id():
    first, second = Indexed.remote(1), Indexed.remote(2)
    assert repr(first) != repr(second)
    assert repr(first) == f"Actor(Indexed, {first.binary().hex()})"


def test_a_user_repr_names_the_actor_in_its_log_prefix(capfd):
    pid = rj.get(Indexed.remote(7).say.remote("hello from seven"), timeout=30)
    seen = {"out": ""}

    def arrived():
        seen["out"] += capfd.readouterr().out
        return "hello from seven" in seen["out"]

    wait_for_condition(arrived, timeout=10)
    assert f"(Indexed(index=7) pid={pid}) hello from seven" in seen["out"]


def test_class_and_static_attributes_are_reachable_by_the_class_name_in_methods():
    actor = Indexed.remote(1)
    assert rj.get(actor.limits.remote(), timeout=30) == (10, 200, "Indexed")
    assert Indexed.LIMIT == 10 and Indexed.scale(3) == 300  # and from the driver
    with pytest.raises(AttributeError, match="no attribute 'missing'"):
        _ = Indexed.missing


def test_actor_pool_takes_methods_with_two_returns():
    pool = ActorPool([Indexed.remote(1), Indexed.remote(2)])
    assert list(pool.map(lambda a, v: a.pair.remote(v), [1, 2, 3])) == [[1, -1], [2, -2], [3, -3]]
    unordered = pool.map_unordered(lambda a, v: a.pair.remote(v), [4, 5])
    assert sorted(map(tuple, unordered)) == [(4, -4), (5, -5)]
    pool.submit(lambda a, v: a.pair.remote(v), 6)
    assert pool.get_next(timeout=30) == [6, -6]


def test_actor_pool_refuses_an_actor_twice():
    actor = Indexed.remote(1)
    pool = ActorPool([actor])
    with pytest.raises(ValueError, match="already belongs"):
        pool.push(actor)
    pool.submit(lambda a, v: a.scale.remote(v), 1)  # busy now: still refused
    with pytest.raises(ValueError, match="already belongs"):
        pool.push(actor)
    assert pool.get_next(timeout=30) == 100
    pool.push(Indexed.remote(2))  # another actor is welcome
    assert pool.has_free()


def test_actor_pool_map_submits_every_call_before_the_first_result_is_read(tmp_path):
    release = str(tmp_path / "release")
    pool = ActorPool([Indexed.remote(1), Indexed.remote(2)])
    results = pool.map(lambda a, v: a.slow_echo.remote(v, release), [1, 2, 3])
    # map returned without reading: both actors are busy with calls already submitted
    assert not pool.has_free()
    assert pool.has_next()
    open(release, "w").close()
    assert list(results) == [1, 2, 3]


def test_actor_pool_leaves_a_dead_actor_out():
    doomed, healthy = Indexed.remote(1), Indexed.remote(2)
    pool = ActorPool([healthy, doomed])  # pop() takes the last: doomed gets the first call
    rj.kill(doomed)
    pool.submit(lambda a, v: a.scale.remote(v), 1)
    with pytest.raises(ActorDiedError):
        pool.get_next(timeout=30)
    assert pool.pop_idle() == healthy
    assert pool.pop_idle() is None
