"""The stream decisions of generator tasks (streams.py), with no processes."""

from __future__ import annotations

import random

import pytest

from rayjupyter.core.streams import (
    NO_BACKPRESSURE,
    STREAM_TRANSITIONS,
    GeneratorStream,
    InvalidStreamEvent,
    ItemVerdict,
    ProducerGate,
    StreamPhase,
    completed_id,
    item_id,
)

TASK = bytes(range(16))


def test_ids_follow_from_the_task_and_index():
    assert completed_id(TASK) == TASK + b"\0\0\0\0"
    assert item_id(TASK, 0) == TASK + b"\0\0\0\1"
    assert item_id(TASK, 0) == item_id(TASK, 0)  # a retry makes the same ids
    with pytest.raises(ValueError):
        item_id(TASK, -1)


def test_items_in_order_duplicates_dropped_gaps_refused():
    stream = GeneratorStream(TASK, b"owner")
    assert stream.item(0) is ItemVerdict.ACCEPT
    assert stream.item(1) is ItemVerdict.ACCEPT
    assert stream.item(0) is ItemVerdict.DUPLICATE  # a retry replays item 0
    with pytest.raises(InvalidStreamEvent):
        stream.item(5)
    stream.finished()
    assert stream.item(2) is ItemVerdict.LATE
    stream.validate()


def test_failure_takes_the_next_index_once():
    stream = GeneratorStream(TASK, b"owner")
    stream.item(0)
    assert stream.failed() == 1
    assert stream.failed() is None
    assert stream.ended and stream.produced == 2
    with pytest.raises(InvalidStreamEvent):
        stream.finished()


def test_credit_is_taken_plus_window():
    stream = GeneratorStream(TASK, b"owner", backpressure=2)
    assert stream.credit() == 2
    stream.item(0)
    stream.item(1)
    stream.validate()
    assert stream.taken(1) == 3
    assert stream.taken(1) is None  # nothing new
    unbounded = GeneratorStream(TASK, b"owner")
    unbounded.item(0)
    assert unbounded.taken(1) is None and unbounded.credit() == NO_BACKPRESSURE


def test_abandon_releases_what_was_never_taken_and_lifts_the_window():
    stream = GeneratorStream(TASK, b"owner", backpressure=3)
    for i in range(3):
        stream.item(i)
    stream.taken(1)
    assert list(stream.abandon()) == [1, 2]
    assert list(stream.abandon()) == []
    assert stream.credit() == NO_BACKPRESSURE


def test_every_transition_of_the_table():
    for source, targets in STREAM_TRANSITIONS.items():
        for target in StreamPhase:
            stream = GeneratorStream(TASK, b"owner")
            stream.phase = source
            move = stream.finished if target is StreamPhase.FINISHED else stream.failed
            if target is StreamPhase.RUNNING:
                continue  # nothing leads back to RUNNING
            if target in targets:
                move()
                assert stream.phase is target
            elif target is StreamPhase.FINISHED:
                with pytest.raises(InvalidStreamEvent):
                    move()
            else:
                assert move() is None  # an ended stream takes no error item


def test_gate_follows_credits():
    gate = ProducerGate(2)
    assert gate.may_make(1) and not gate.may_make(2)
    gate.update(3, 0)
    assert gate.may_make(2)
    gate.update(1, 0)  # a late, smaller credit changes nothing
    assert gate.may_make(2)
    gate.update(NO_BACKPRESSURE, 2)
    assert gate.may_make(100)
    assert not gate.must_send(1) and gate.must_send(2)
    assert ProducerGate().may_make(10**6)


@pytest.mark.parametrize("seed", range(5))
def test_random_runs_keep_the_invariants(seed):
    """Producer and consumer interleaved at random, with crashes that replay the stream."""
    rng = random.Random(seed)
    for _ in range(50):
        window = rng.choice([NO_BACKPRESSURE, 1, 2, 5])
        stream = GeneratorStream(TASK, b"owner", window)
        gate = ProducerGate(window)
        made = 0  # what the current attempt has yielded
        total = rng.randint(0, 12)
        for _ in range(200):
            event = rng.random()
            if event < 0.5 and made < total and gate.may_make(made):
                expected = ItemVerdict.ACCEPT if made == stream.produced else ItemVerdict.DUPLICATE
                if stream.ended:
                    expected = ItemVerdict.LATE
                assert stream.item(made) is expected
                made += 1
            elif event < 0.8 and stream.consumed < stream.produced:
                credit = stream.taken(stream.consumed + 1)
                if credit is not None:
                    gate.update(credit, stream.produced)
            elif event < 0.85 and not stream.ended:  # the worker crashed: a new attempt
                made = 0
                gate = ProducerGate(window)
                gate.update(stream.credit(), stream.produced)
            elif made == total and not stream.ended:
                stream.finished()
            stream.validate()
        if not stream.ended and rng.random() < 0.5:
            stream.failed()
        released = list(stream.abandon())
        assert released == list(range(stream.consumed, stream.produced))
        stream.validate()
