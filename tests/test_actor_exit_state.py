"""How actors end, in the actor table with no process (``core/actor_state.py``): the
graceful end of an actor whose handles all went (asked to end itself, killed after the
grace), ``rj.kill`` during it, and actors sharing their owner's fate."""

from __future__ import annotations

from test_actor_state import Shell, error_of, make_call

from rayjupyter.core import actor_state as A
from rayjupyter.core.actor_state import ActorRecord, ActorState
from rayjupyter.core.exceptions import ActorDiedError
from rayjupyter.core.scheduler import TaskState


def _alive(shell: Shell, **options: object) -> ActorRecord:
    actor = shell.create(**options)
    shell.schedule()
    assert actor.state is ActorState.ALIVE
    return actor


def test_an_unused_actor_is_asked_to_end_and_killed_only_after_the_grace() -> None:
    shell = Shell()
    shell.table.grace_s = 30.0
    actor = _alive(shell, max_restarts=3)
    worker = actor.worker
    shell.now = 100.0
    shell.run(shell.table.released(actor, shell.now))
    assert actor.state is ActorState.EXITING and shell.asked_exit == [worker]
    assert not shell.doomed  # not killed: its __ray_shutdown__ and atexit handlers run
    late = shell.call(actor)  # a call still on its way when the last handle went
    assert late not in shell.dispatched
    assert shell.table.overdue(129.0) == []
    out = shell.run(shell.table.overdue(130.0))
    assert [op[0] for op in out] == [A.KILL_PROCESS] and shell.doomed == {worker}
    assert shell.run(shell.table.overdue(200.0)) == []  # killed once
    shell.process_dies_as_told()
    assert actor.state is ActorState.DEAD  # for good, although max_restarts=3
    assert not shell.table.exit_deadlines
    reason = "all handles to it went out of scope"
    assert reason in str(error_of(actor.death_error))
    assert isinstance(error_of(shell.ended[late.task_id][1]), ActorDiedError)


def test_an_actor_that_ends_itself_in_time_is_not_killed() -> None:
    shell = Shell()
    actor = _alive(shell)
    shell.run(shell.table.released(actor, 0.0))
    shell.ends_come()  # it ran __ray_shutdown__ and ended
    assert actor.state is ActorState.DEAD and not shell.table.exit_deadlines
    assert shell.table.overdue(1e9) == []


def test_a_busy_actor_is_asked_to_end_once_its_calls_are_done() -> None:
    shell = Shell()
    actor = _alive(shell)
    task = shell.call(actor)
    shell.run(shell.table.released(actor, 0.0))
    assert actor.state is ActorState.ALIVE and not shell.asked_exit
    shell.answer(task)
    assert actor.state is ActorState.EXITING and shell.asked_exit == [actor.worker]


def test_rj_kill_does_not_wait_for_a_graceful_end() -> None:
    shell = Shell()
    actor = _alive(shell)
    shell.run(shell.table.released(actor, 0.0))
    out = shell.run(shell.table.kill(actor.actor_id, no_restart=True))
    assert [op[0] for op in out] == [A.KILL_PROCESS]
    shell.process_dies_as_told()
    assert actor.state is ActorState.DEAD


def test_exit_actor_then_the_last_handle_gets_a_grace_not_a_kill() -> None:
    """exit_actor() runs the atexit handlers: the last handle going meanwhile must not
    kill the process (it did), only bound how long it may take."""
    shell = Shell()
    shell.table.grace_s = 5.0
    actor = _alive(shell)
    shell.table.exiting(actor.actor_id, actor.worker or b"")
    assert shell.run(shell.table.released(actor, 10.0)) == []
    assert not shell.doomed and not shell.asked_exit
    assert [op[0] for op in shell.run(shell.table.overdue(15.0))] == [A.KILL_PROCESS]
    shell.process_dies_as_told()
    assert "exit_actor() was called" in str(error_of(actor.death_error))


def test_an_actor_still_waiting_to_start_ends_at_once() -> None:
    shell = Shell(cpus=0.5)
    actor = shell.create()  # needs a CPU: stays pending, no process to ask
    shell.run(shell.table.released(actor, 0.0))
    assert actor.state is ActorState.DEAD and not shell.asked_exit


def _waiting_for_arguments(shell: Shell, owner: bytes, **options: object) -> ActorRecord:
    """An actor whose __init__ arguments never come (Ray's owner_dies_before_dependency)."""
    actor_id = b"actor-of-" + owner + bytes([len(shell.table.actors)])
    creation = make_call(actor_id, owner, name="A.__init__")
    creation.method, creation.demand, creation.return_ids = "__init__", {"CPU": 1.0}, ()
    demand = {"CPU": 1.0}
    actor = ActorRecord(actor_id, "A", creation, b"", demand, demand, dict(options), "")
    actor.refs = 2  # its owner's handle, and one it passed to another process
    shell.table.add(actor)
    shell.state.submit(creation)
    shell.run(shell.table.pump(actor_id))
    assert actor.state is ActorState.PENDING and creation.state is TaskState.WAITING
    return actor


def test_an_actor_shares_its_owners_fate_even_before_its_arguments_exist() -> None:
    shell = Shell()
    doomed = _waiting_for_arguments(shell, b"owner")
    detached = _waiting_for_arguments(shell, b"owner", lifetime="detached")
    other = _waiting_for_arguments(shell, b"someone-else")
    call = shell.call(doomed, caller=b"caller")  # queued behind its __init__
    assert call.state is TaskState.READY and call not in shell.dispatched
    shell.run(shell.table.owner_gone(b"owner"))
    assert doomed.state is ActorState.DEAD
    assert "its owner" in str(error_of(doomed.death_error))
    state, blob = shell.ended[call.task_id]
    assert state is TaskState.FAILED and isinstance(error_of(blob), ActorDiedError)
    assert detached.state is ActorState.PENDING and other.state is ActorState.PENDING
    assert doomed.creation.task_id not in shell.state.tasks  # its __init__ is forgotten


def test_a_running_actor_dies_with_its_owner_and_an_ending_one_is_left_to_end() -> None:
    shell = Shell(cpus=2)
    running = _alive(shell)
    ending = _alive(shell)
    shell.run(shell.table.released(ending, 0.0))
    assert ending.state is ActorState.EXITING
    shell.run(shell.table.owner_gone(b"driver"))
    assert running.state is ActorState.DEAD and running.worker is None
    assert ending.state is ActorState.EXITING  # asked to end already: it ends by itself
    shell.ends_come()
    assert ending.state is ActorState.DEAD


def test_an_unused_actor_hosted_by_a_peer_is_asked_to_end_there() -> None:
    home = Shell(cpus=1, peers=1)
    actor = home.create(cpus=2.0)  # does not fit here: a peer hosts it
    home.schedule()
    assert actor.host
    out = home.run(home.table.released(actor, 0.0))
    stop = next(op for op in out if op[0] == A.STOP_HOSTED)
    assert stop[4] is True  # graceful: ExitActor to the peer, not KillActor
    assert actor.state is ActorState.DEAD  # the home forgets it; the peer ends it
    killed = home.create(cpus=2.0)
    home.schedule()
    out = home.run(home.table.kill(killed.actor_id, no_restart=True))
    assert [op[4] for op in out if op[0] == A.STOP_HOSTED] == [False]  # rj.kill: KillActor


def test_the_peer_hosting_an_actor_ends_it_once_its_calls_are_done() -> None:
    peer = Shell()
    actor = _alive(peer)
    task = peer.call(actor)
    assert peer.run(peer.table.asked_to_end(actor, 0.0)) == []
    assert actor.state is ActorState.ALIVE and actor.release_when_idle
    peer.answer(task)
    assert actor.state is ActorState.EXITING and peer.asked_exit == [actor.worker]


def test_an_idle_env_worker_that_created_live_actors_is_not_reaped() -> None:
    """Its end would end them (``owner_gone``), so room is not made with it."""
    from test_scheduler import make_task, node

    from rayjupyter.core import node_state as ns

    shell = node(cpus=2, workers=1)
    task = shell.submit(make_task("in-x", env="x"))
    shell.schedule(known_envs=("x",), now=0.0)
    shell.connect_all()
    shell.schedule(known_envs=("x",))
    worker = shell.state.workers[task.worker or b""]
    shell.finish(worker)
    creation = make_call(b"owned-actor", worker.client_id, name="A.__init__")
    creation.method = "__init__"
    owned = ActorRecord(b"owned-actor", "A", creation, b"", {}, {}, {}, "")
    shell.state.actor_table.add(owned)
    later = worker.idle_since + ns.ENV_WORKER_IDLE_S + 1
    assert shell.state.reap_env_workers(later) == []
    owned.transition(ActorState.DEAD)
    assert shell.run(shell.state.reap_env_workers(later)) == [(ns.KILL, worker)]
