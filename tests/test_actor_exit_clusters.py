"""How actors end, where a test needs a cluster of its own: the grace after which an
actor asked to end is killed (a setting the node reads when it starts), and an actor
whose creator's whole node died before its ``__init__`` arguments came."""

from __future__ import annotations

import asyncio
import os
import time

import pytest
from cluster_helpers import started_nodes
from helpers import wait_for_condition, wait_for_pids_gone

import rayjupyter as rj
from rayjupyter.core.node_actors import GRACEFUL_EXIT_ENV
from rayjupyter.exceptions import ActorDiedError, RayActorError


@rj.remote
class HangsOnShutdown:
    def __init__(self, started, finished):
        self.started, self.finished = str(started), str(finished)

    def __ray_shutdown__(self):
        with open(self.started, "w") as out:
            out.write("started")
        time.sleep(60)  # buggy cleanup: the node kills it after the grace
        with open(self.finished, "w") as out:
            out.write("finished")

    def pid(self):
        return os.getpid()


def test_an_actor_that_does_not_end_within_the_grace_is_killed(tmp_path, monkeypatch):
    monkeypatch.setenv(GRACEFUL_EXIT_ENV, "1")
    started, finished = tmp_path / "started", tmp_path / "finished"
    rj.init(num_cpus=1)
    try:
        actor = HangsOnShutdown.remote(started, finished)
        pid = rj.get(actor.pid.remote(), timeout=30)
        del actor
        wait_for_condition(started.exists, timeout=20)
        wait_for_pids_gone([pid], timeout=15)  # within about the grace, not the 60 s
        assert not finished.exists()
    finally:
        rj.shutdown()


def test_a_bad_grace_setting_is_a_clear_error(monkeypatch):
    from rayjupyter.core.node_actors import graceful_exit_s

    monkeypatch.setenv(GRACEFUL_EXIT_ENV, "soon")
    with pytest.raises(ValueError, match=GRACEFUL_EXIT_ENV):
        graceful_exit_s()
    monkeypatch.setenv(GRACEFUL_EXIT_ENV, "2.5")
    assert graceful_exit_s() == 2.5


@rj.remote
class Blocker:
    async def wait(self):
        await asyncio.sleep(3600)


@rj.remote
class Child:
    def __init__(self, dependency):
        self.dependency = dependency

    def f(self):
        return self.dependency


@rj.remote
class Holder:
    """Lives on the head; holds the handle a process on another node passed it."""

    def keep(self, child):
        self.child = child

    def call(self):
        return rj.get(self.child.f.remote(), timeout=60)


@rj.remote(resources={"doomed": 1})
class Parent:
    def create(self, holder):
        self.blocker = Blocker.remote()
        child = Child.remote(self.blocker.wait.remote())  # its argument never comes
        rj.get(holder.keep.remote(child), timeout=60)

    def pid(self):
        return os.getpid()


def test_an_actor_whose_owners_node_died_before_its_arguments_came_fails_its_calls():
    """Ray's test_actor_owner_node_dies_before_dependency_ready: a process on another
    node holds a handle to an actor whose creator's node died while its __init__ waited
    for an argument; its calls fail instead of waiting forever."""
    with started_nodes(num_cpus=2) as nodes:
        doomed = nodes.join(num_cpus=2, doomed=1)
        holder = Holder.remote()
        parent = Parent.remote()
        pid = rj.get(parent.pid.remote(), timeout=60)
        rj.get(parent.create.remote(holder), timeout=60)
        doomed.stop()
        wait_for_pids_gone([pid])
        with pytest.raises(RayActorError) as caught:
            rj.get(holder.call.remote(), timeout=90)
        assert isinstance(caught.value, ActorDiedError), caught.value


@rj.remote(resources={"far": 1})
class FarAway:
    def __init__(self, log):
        self.log = str(log)

    def __ray_shutdown__(self):
        with open(self.log, "w") as out:
            out.write("shutdown")

    def pid(self):
        return os.getpid()


def test_an_unused_actor_on_another_node_also_ends_gracefully(tmp_path):
    """Its home (the head) asks the peer hosting it to let it end itself (ExitActor)."""
    log = tmp_path / "log"
    with started_nodes(num_cpus=1) as nodes:
        nodes.join(num_cpus=1, far=1)
        actor = FarAway.remote(log)
        pid = rj.get(actor.pid.remote(), timeout=60)
        del actor
        wait_for_condition(log.exists, timeout=20)
        wait_for_pids_gone([pid])
