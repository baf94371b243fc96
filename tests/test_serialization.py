"""Serialization: round trips, the flat layout, zero-copy buffers, errors and contained refs."""

from __future__ import annotations

import datetime
import decimal
import pickle
import threading
from collections import OrderedDict, namedtuple
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from rayjupyter.core import serialization
from rayjupyter.core.exceptions import RayError, SerializationError
from rayjupyter.core.serialization import (
    INLINE_THRESHOLD,
    KIND_CLOUDPICKLE,
    KIND_PLAIN,
    deserialize,
    layout_kind,
    serialize,
)

Point = namedtuple("Point", "x y")


class Box:
    """A user class defined in the test module (pickled by value when it lives in __main__)."""

    def __init__(self, content: Any) -> None:
        self.content = content

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Box) and other.content == self.content

    __hash__ = None  # type: ignore[assignment]


def round_trip(value: Any) -> Any:
    return deserialize(serialize(value).to_bytes())


PLAIN_VALUES = [
    None,
    True,
    False,
    0,
    -7,
    2**200,
    1.5,
    complex(1, -2),
    "",
    "héllo wörld",
    b"",
    b"\x00\xff" * 10,
    (),
    ((), {}),
    ((1, "a"), {"k": 2.0}),
    [1, [2, [3, []]]],
    {"a": {"b": (1, 2)}, 3: None},
    {(1, 2): "tuple key"},
]

OTHER_VALUES = [
    list(range(1000)),  # over the fast-path budget: cloudpickle path
    {"deep": [[[[[1]]]]]},  # deeper than the fast-path limit
    {1, 2, 3},
    frozenset({"x"}),
    bytearray(b"abc"),
    Point(1, 2),
    OrderedDict(a=1),
    Box([1, 2]),
    decimal.Decimal("1.25"),
    datetime.datetime(2024, 1, 2, 3, 4, 5),
    ValueError("boom", 3),
    range(5),
    True.__class__,  # a class, pickled by reference
]


@pytest.mark.parametrize("value", PLAIN_VALUES, ids=repr)
def test_plain_values_round_trip_on_the_fast_path(value: Any) -> None:
    sobj = serialize(value)
    assert sobj.kind == KIND_PLAIN
    assert sobj.buffers == [] and sobj.contained_refs == []
    data = sobj.to_bytes()
    assert len(data) == sobj.nbytes
    assert layout_kind(data) == KIND_PLAIN
    assert deserialize(data) == value
    assert deserialize(memoryview(data)) == value
    assert deserialize(bytearray(data)) == value


@pytest.mark.parametrize("value", OTHER_VALUES, ids=lambda v: type(v).__name__)
def test_other_values_round_trip_with_cloudpickle(value: Any) -> None:
    sobj = serialize(value)
    assert sobj.kind == KIND_CLOUDPICKLE
    back = round_trip(value)
    if isinstance(value, BaseException):
        assert type(back) is type(value) and back.args == value.args
    else:
        assert back == value
        assert type(back) is type(value)


def test_subclasses_of_builtins_are_not_taken_for_plain() -> None:
    class MyInt(int):
        pass

    class MyDict(dict[str, int]):
        pass

    for value in (MyInt(3), MyDict(a=1), (1, MyInt(2))):
        sobj = serialize(value)
        assert sobj.kind == KIND_CLOUDPICKLE
        back = deserialize(sobj.to_bytes())
        assert back == value


def test_functions_defined_in_a_test_round_trip() -> None:
    offset = 10

    def add_offset(x: int) -> int:
        return x + offset

    square = lambda x: x * x  # noqa: E731 - a lambda is the point of the test

    f = round_trip(add_offset)
    g = round_trip(square)
    assert f(1) == 11
    assert g(7) == 49
    assert round_trip(Box)(3) == Box(3)


NUMPY_ARRAYS = [
    np.arange(1000, dtype=np.float64),
    np.arange(256, dtype=np.int8),
    np.arange(100, dtype=np.uint16).reshape(10, 10),
    (np.arange(50) + 1j).astype(np.complex128),
    np.array([True, False, True]),
    np.arange("2024-01-01", "2024-02-01", dtype="datetime64[D]"),
    np.zeros(4, dtype=[("a", "<i4"), ("b", "<f8")]),
    np.array(["a", "bc"], dtype="U2"),
    np.array([{"x": 1}, None], dtype=object),  # object arrays pickle their items in band
    np.float32(3.5),  # a numpy scalar
    np.array(7),  # zero-dimensional
    np.empty((0, 3)),
    np.asfortranarray(np.arange(12.0).reshape(3, 4)),
    np.arange(100.0).reshape(10, 10)[::2, ::3],  # not contiguous: falls back to in band
    np.arange(10)[::-1],
]


@pytest.mark.parametrize("array", NUMPY_ARRAYS, ids=lambda a: f"{a.dtype}{np.shape(a)}")
def test_numpy_arrays_round_trip(array: Any) -> None:
    back = round_trip(array)
    assert type(back) is type(array)
    assert back.dtype == array.dtype and np.shape(back) == np.shape(array)
    if array.dtype == object:
        assert back.tolist() == array.tolist()
    else:
        np.testing.assert_array_equal(back, array)


def test_large_contiguous_array_travels_out_of_band() -> None:
    array = np.random.default_rng(0).random(200_000)
    sobj = serialize(array)
    assert len(sobj.buffers) == 1
    assert len(sobj.meta) < 1024  # the data is not in the pickle stream
    assert sobj.nbytes > INLINE_THRESHOLD
    data = sobj.to_bytes()
    back = deserialize(data)
    np.testing.assert_array_equal(back, array)
    assert not back.flags.writeable  # values from the store are read-only, as in Ray
    # zero copy: the array's memory is inside the bytes we passed in
    base = np.frombuffer(data, dtype=np.uint8).__array_interface__["data"][0]
    addr = back.__array_interface__["data"][0]
    assert base <= addr and addr + back.nbytes <= base + len(data)
    assert (addr - base) % serialization.ALIGNMENT == 0


def test_non_contiguous_arrays_go_in_band_and_fortran_arrays_out_of_band() -> None:
    strided = np.arange(40_000.0)[::2]
    sobj = serialize(strided)
    assert sobj.buffers == []
    np.testing.assert_array_equal(deserialize(sobj.to_bytes()), strided)
    fortran = np.asfortranarray(np.arange(40_000.0).reshape(200, 200))
    sobj = serialize(fortran)
    assert len(sobj.buffers) == 1
    back = deserialize(sobj.to_bytes())
    assert back.flags.f_contiguous
    np.testing.assert_array_equal(back, fortran)


def test_pyarrow_table_uses_out_of_band_buffers() -> None:
    table = pa.table(
        {
            "i": pa.array(np.arange(100_000)),
            "f": pa.array(np.random.default_rng(1).random(100_000)),
            "s": pa.array([f"row{i}" for i in range(1000)] * 100),
        }
    )
    sobj = serialize(table)
    assert len(sobj.buffers) >= 3
    assert len(sobj.meta) < 4096
    back = deserialize(sobj.to_bytes())
    assert back.equals(table)


def test_nested_containers_with_arrays_and_functions() -> None:
    value = {
        "arrays": [np.arange(i * 1000, dtype=np.int32) for i in range(1, 4)],
        "fn": lambda x: x + 1,
        "table": pa.table({"a": [1, 2, 3]}),
        "meta": (Point(1, 2), {"nested": {"deeper": [None, b"x"]}}),
    }
    back = round_trip(value)
    for a, b in zip(back["arrays"], value["arrays"], strict=True):
        np.testing.assert_array_equal(a, b)
    assert back["fn"](1) == 2
    assert back["table"].equals(value["table"])
    assert back["meta"] == value["meta"]


def test_write_into_matches_to_bytes_and_zeroes_padding() -> None:
    value = [np.arange(1001, dtype=np.uint8), np.arange(37, dtype=np.float64), "tail"]
    sobj = serialize(value)
    assert len(sobj.buffers) == 2
    dest = bytearray(b"\xee" * (sobj.nbytes + 10))
    sobj.write_into(memoryview(dest))
    assert bytes(dest[: sobj.nbytes]) == sobj.to_bytes()
    assert dest[sobj.nbytes :] == b"\xee" * 10  # nothing written past the layout
    with pytest.raises(ValueError, match="needs"):
        sobj.write_into(memoryview(bytearray(sobj.nbytes - 1)))


def test_deserialize_rejects_foreign_data() -> None:
    with pytest.raises(ValueError, match="shorter than the header"):
        deserialize(b"abc")
    with pytest.raises(ValueError, match="same rayjupyter version"):
        deserialize(b"XX" + bytes(30))
    data = serialize(np.arange(10_000)).to_bytes()
    with pytest.raises(ValueError, match="truncated"):
        deserialize(data[: len(data) // 2])


def test_plain_helpers_round_trip() -> None:
    msg = {"kind": "SubmitTask", "args": [1, 2.0, b"x"]}
    assert serialization.loads_plain(serialization.dumps_plain(msg)) == msg


# -- errors ---------------------------------------------------------------------------


def test_unpicklable_value_names_what_repr_and_type() -> None:
    lock = threading.Lock()
    with pytest.raises(SerializationError) as info:
        serialize(lock, what="argument 0 of task 'f'")
    err = info.value
    assert isinstance(err, TypeError) and isinstance(err, RayError)
    text = str(err)
    assert text.startswith("Could not serialize argument 0 of task 'f': ")
    assert "_thread.lock" in text and "of type _thread.lock" in text
    assert "cannot pickle" in text
    assert "\n" not in text


def test_error_points_at_the_innermost_offender_in_containers() -> None:
    value = {"ok": [1, 2], "bad": [0, {"deeper": threading.Lock()}]}
    with pytest.raises(SerializationError) as info:
        serialize(value, what="the put value")
    text = str(info.value)
    assert "Could not serialize the put value" in text
    assert "['bad'][1]['deeper']" in text
    assert "of type _thread.lock" in text
    assert "inside a dict" in text


def test_error_looks_inside_object_attributes() -> None:
    with pytest.raises(SerializationError) as info:
        serialize(Box(Box(threading.Lock())), what="return value of task 'g'")
    text = str(info.value)
    assert ".content.content" in text and "of type _thread.lock" in text


def test_error_from_a_failing_reduce_is_wrapped() -> None:
    class Refuses:
        def __reduce__(self) -> Any:
            raise RuntimeError("no pickling for me")

        def __repr__(self) -> str:
            return "<Refuses>"

    with pytest.raises(SerializationError, match=r"<Refuses> of type .*Refuses.*no pickling"):
        serialize([1, Refuses()], what="argument 1 of task 'h'")


def test_error_survives_a_broken_repr() -> None:
    class BadRepr:
        def __reduce__(self) -> Any:
            raise RuntimeError("no pickling either")

        def __repr__(self) -> str:
            raise RuntimeError("repr exploded")

    with pytest.raises(SerializationError, match=r"repr failed.*no pickling either"):
        serialize({"k": BadRepr()})


# -- contained ObjectRefs -------------------------------------------------------------


class FakeRef:
    """Stand-in for ObjectRef: reports itself through the hook while being pickled."""

    def __init__(self, key: int) -> None:
        self.key = key

    def __reduce__(self) -> tuple[Any, ...]:
        serialization.record_contained_ref(self)
        return (FakeRef, (self.key,))


class SerializesInside:
    """Runs a nested serialize() while being pickled, to check the lists stay apart."""

    inner_refs: list[Any] = []

    def __reduce__(self) -> tuple[Any, ...]:
        inner = serialize([FakeRef(99), FakeRef(98)])
        SerializesInside.inner_refs = inner.contained_refs
        return (SerializesInside, ())


def test_contained_refs_are_collected() -> None:
    a, b = FakeRef(1), FakeRef(2)
    sobj = serialize({"x": [a, (b,)], "y": 3})
    assert sobj.contained_refs == [a, b]
    back = deserialize(sobj.to_bytes())
    assert [r.key for r in (back["x"][0], back["x"][1][0])] == [1, 2]
    assert serialize([1, 2]).contained_refs == []


def test_nested_serialize_keeps_its_own_ref_list() -> None:
    outer_ref = FakeRef(1)
    sobj = serialize([outer_ref, SerializesInside(), FakeRef(2)])
    assert [r.key for r in sobj.contained_refs] == [1, 2]
    assert [r.key for r in SerializesInside.inner_refs] == [99, 98]


def test_refs_pickled_outside_serialize_are_not_recorded() -> None:
    pickle.dumps(FakeRef(5))  # plain pickling: the hook must do nothing
    assert serialize([FakeRef(6)]).contained_refs[0].key == 6
    assert len(serialize([FakeRef(6)]).contained_refs) == 1


def test_ref_lists_are_per_thread() -> None:
    barrier = threading.Barrier(2)
    results: dict[int, list[int]] = {}

    class Waits:
        """Holds both threads inside serialize() at the same time."""

        def __reduce__(self) -> tuple[Any, ...]:
            barrier.wait(timeout=10)
            return (int, (0,))

    def work(n: int) -> None:
        sobj = serialize([FakeRef(n), Waits(), FakeRef(n + 1)])
        results[n] = [r.key for r in sobj.contained_refs]

    threads = [threading.Thread(target=work, args=(n,)) for n in (10, 20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert results == {10: [10, 11], 20: [20, 21]}


def test_a_failed_serialize_does_not_leak_its_ref_list() -> None:
    with pytest.raises(SerializationError):
        serialize([FakeRef(1), threading.Lock()])
    pickle.dumps(FakeRef(2))
    assert [r.key for r in serialize([FakeRef(3)]).contained_refs] == [3]
