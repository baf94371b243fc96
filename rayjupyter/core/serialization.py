"""Turn Python values into one flat, self-describing byte layout and back.

Layout (all integers little-endian)::

    header   magic b"RJ" | version u8 | kind u8 | nbuf u32 | meta_len u64     (16 bytes)
    lengths  nbuf x u64                                    (one per out-of-band buffer)
    meta     the pickle stream                             (meta_len bytes)
    buffers  each starts at a multiple of 64 bytes from the start of the layout

The same layout is used inline (bytes in a message) and in a shared-memory file, so a
reader that maps the file gets numpy arrays and Arrow tables whose memory *is* the mapping
(pickle protocol 5 out-of-band buffers; no copy). 64-byte alignment keeps SIMD loads and
Arrow's alignment expectations happy because an mmap always starts page aligned.

Plain builtin values (the common case on the task hot path: ``((), {})``, ints, short
strings) skip cloudpickle and use the C pickler directly, which is several times faster
because cloudpickle's ``reducer_override`` costs a Python call per object.
"""

from __future__ import annotations

import io
import pickle
import struct
import threading
import types
from collections import ChainMap
from collections.abc import Callable, Iterator
from typing import Any, Final

import cloudpickle

__all__ = [
    "INLINE_THRESHOLD",
    "KIND_CLOUDPICKLE",
    "KIND_PLAIN",
    "SerializedObject",
    "deserialize",
    "dumps",
    "dumps_plain",
    "layout_kind",
    "loads_plain",
    "record_contained_ref",
    "serialize",
]

INLINE_THRESHOLD: Final[int] = 100 * 1024
"""Values whose layout is larger than this go to shared memory instead of a message."""

ALIGNMENT: Final[int] = 64
KIND_PLAIN: Final[int] = 0
"""The meta was written by the C pickler (plain builtins only)."""
KIND_CLOUDPICKLE: Final[int] = 1
"""The meta was written by cloudpickle (functions, classes, arbitrary objects)."""

_MAGIC: Final[bytes] = b"RJ"
_VERSION: Final[int] = 1
_HEADER = struct.Struct("<2sBBIQ")
_HEADER_SIZE: Final[int] = _HEADER.size
_LENGTH = struct.Struct("<Q")
_PROTOCOL: Final[int] = 5

# Fast-path limits: a value qualifies if it is made only of these exact types, with at most
# this many container elements in total and nesting no deeper than this.
_PLAIN_SCALARS: Final[frozenset[type]] = frozenset(
    {type(None), bool, int, float, complex, str, bytes}
)
_PLAIN_MAX_ITEMS: Final[int] = 64
_PLAIN_MAX_DEPTH: Final[int] = 4
_SEARCH_DEPTH: Final[int] = 6
_SEARCH_WIDTH: Final[int] = 1000


_NO_OFFSETS: Final[list[int]] = []


def _align(n: int) -> int:
    return (n + ALIGNMENT - 1) & ~(ALIGNMENT - 1)


class SerializedObject:
    """The result of serialize(): the pickle stream and its out-of-band buffers, not yet copied."""

    __slots__ = ("_offsets", "buffers", "contained_refs", "kind", "meta", "nbytes")

    def __init__(
        self,
        meta: bytes,
        buffers: list[pickle.PickleBuffer | memoryview],
        contained_refs: list[Any],
        kind: int,
    ) -> None:
        self.meta = meta
        self.buffers = buffers
        self.contained_refs = contained_refs
        self.kind = kind
        if not buffers:  # hot path
            self._offsets: list[int] = _NO_OFFSETS
            self.nbytes: int = _HEADER_SIZE + len(meta)
            return
        # Offsets of each buffer in the flat layout; computed once because writers need them.
        pos = _HEADER_SIZE + _LENGTH.size * len(buffers) + len(meta)
        offsets: list[int] = []
        for buf in buffers:
            pos = _align(pos)
            offsets.append(pos)
            pos += memoryview(buf).nbytes
        self._offsets = offsets
        self.nbytes = pos

    def _head(self) -> bytes:
        """Header and buffer-length table (everything before the meta)."""
        head = _HEADER.pack(_MAGIC, _VERSION, self.kind, len(self.buffers), len(self.meta))
        if self.buffers:
            lengths = [memoryview(b).nbytes for b in self.buffers]
            head += struct.pack(f"<{len(lengths)}Q", *lengths)
        return head

    def chunks(self) -> Iterator[tuple[int, bytes | memoryview]]:
        """Yield (offset, data) pieces of the layout in order; gaps between them are zero."""
        head = self._head()
        yield 0, head
        yield len(head), self.meta
        for off, buf in zip(self._offsets, self.buffers, strict=True):
            yield off, _raw(buf)

    def write_into(self, dest: memoryview) -> None:
        """Write the flat layout into dest (at least nbytes long); padding bytes are zeroed."""
        if dest.nbytes < self.nbytes:
            raise ValueError(f"destination holds {dest.nbytes} bytes, layout needs {self.nbytes}")
        out = dest.cast("B") if dest.format != "B" or dest.ndim != 1 else dest
        end = 0
        for off, piece in self.chunks():
            if off > end:
                out[end:off] = bytes(off - end)
            n = len(piece) if isinstance(piece, bytes) else piece.nbytes
            out[off : off + n] = piece
            end = off + n

    def to_bytes(self) -> bytes:
        """The flat layout as one bytes object (for inline values in a message)."""
        if not self.buffers:  # hot path: header + meta, no padding
            return _HEADER.pack(_MAGIC, _VERSION, self.kind, 0, len(self.meta)) + self.meta
        pieces: list[bytes | memoryview] = []
        end = 0
        for off, piece in self.chunks():
            if off > end:
                pieces.append(bytes(off - end))
            pieces.append(piece)
            end = off + (len(piece) if isinstance(piece, bytes) else piece.nbytes)
        return b"".join(pieces)  # one copy of each buffer

    def __repr__(self) -> str:
        return (
            f"SerializedObject(kind={self.kind}, meta={len(self.meta)}B, "
            f"buffers={len(self.buffers)}, nbytes={self.nbytes}, refs={len(self.contained_refs)})"
        )


def _raw(buf: pickle.PickleBuffer | memoryview) -> memoryview:
    """A flat unsigned-byte view of a buffer (PickleBuffer.raw or a cast memoryview)."""
    if isinstance(buf, pickle.PickleBuffer):
        return buf.raw()
    return buf if (buf.format == "B" and buf.ndim == 1) else buf.cast("B")


# ----------------------------------------------------------------------------------------
# Contained ObjectRefs: ObjectRef.__reduce__ reports itself here while serialize() runs.

_tls = threading.local()


def record_contained_ref(ref: Any) -> None:
    """Note that ref is being pickled inside the value that the current serialize() call handles.

    Called by ObjectRef.__reduce__; outside a serialize() call (plain pickling) it does nothing.
    """
    refs: list[Any] | None = getattr(_tls, "refs", None)
    if refs is not None:
        refs.append(ref)


# ----------------------------------------------------------------------------------------
# serialize / deserialize


def _plain_budget(value: Any, depth: int, budget: int) -> int:
    """Remaining element budget if value is plain builtins only, else -1 (loops: hot path)."""
    t = type(value)
    if t in _PLAIN_SCALARS:
        return budget
    if depth >= _PLAIN_MAX_DEPTH:
        return -1
    if t is tuple or t is list:
        budget -= len(value)
        if budget < 0:
            return -1
        for item in value:
            ti = type(item)
            if ti in _PLAIN_SCALARS or ((ti is tuple or ti is dict or ti is list) and not item):
                continue  # scalars and empty containers (the "()" and "{}" of no-arg calls)
            budget = _plain_budget(item, depth + 1, budget)
            if budget < 0:
                return -1
        return budget
    if t is dict:
        budget -= 2 * len(value)
        if budget < 0:
            return -1
        for key, item in value.items():
            if type(key) not in _PLAIN_SCALARS:
                budget = _plain_budget(key, depth + 1, budget)
                if budget < 0:
                    return -1
            if type(item) not in _PLAIN_SCALARS:
                budget = _plain_budget(item, depth + 1, budget)
                if budget < 0:
                    return -1
        return budget
    return -1


def _is_plain(value: Any) -> bool:
    """True if value is built only from builtin scalars and small builtin containers."""
    return type(value) in _PLAIN_SCALARS or _plain_budget(value, 0, _PLAIN_MAX_ITEMS) >= 0


def _buffer_callback(out: list[pickle.PickleBuffer | memoryview]) -> Any:
    """A pickle buffer_callback: keep contiguous buffers out of band, others in band."""

    def callback(buf: pickle.PickleBuffer) -> bool:
        try:
            raw = buf.raw()
        except BufferError:
            return True  # not contiguous: pickle writes it in band
        if not raw.c_contiguous:
            return True
        out.append(buf)
        return False

    return callback


_DYNAMIC_FILENAME = "<dynamic-code>"
_cloudpickle_code_reduce: Callable[[types.CodeType], tuple[Any, tuple[Any, ...]]] | None = getattr(
    cloudpickle.cloudpickle, "_code_reduce", None
)


def _code_reduce(code: types.CodeType) -> tuple[Any, tuple[Any, ...]]:
    """cloudpickle's reduction, but with the code's real file name.

    cloudpickle 3.1.3 names the file of every function it ships ``<dynamic-code>``; remote
    tracebacks then lose their source lines (the file and the notebook cell they point to).
    """
    assert _cloudpickle_code_reduce is not None
    constructor, args = _cloudpickle_code_reduce(code)
    args = tuple(
        code.co_filename if isinstance(arg, str) and arg == _DYNAMIC_FILENAME else arg
        for arg in args
    )
    return constructor, args


#: serializers registered by ``rj.util.register_serializer``: type -> reduce function
custom_reducers: dict[type, Callable[[Any], Any]] = {}


class _Pickler(cloudpickle.Pickler):  # type: ignore[misc]
    dispatch_table = ChainMap(
        custom_reducers,
        {types.CodeType: _code_reduce} if _cloudpickle_code_reduce is not None else {},
        cloudpickle.Pickler.dispatch_table,
    )


def dumps(
    value: Any,
    protocol: int = _PROTOCOL,
    buffer_callback: Callable[[pickle.PickleBuffer], Any] | None = None,
) -> bytes:
    """cloudpickle.dumps, keeping functions' file names (see _code_reduce)."""
    with io.BytesIO() as file:
        _Pickler(file, protocol=protocol, buffer_callback=buffer_callback).dump(value)
        return file.getvalue()


def serialize(value: Any, *, what: str = "value") -> SerializedObject:
    """Pickle value (protocol 5, large buffers out of band) without copying those buffers.

    Raises SerializationError (also a TypeError) naming `what`, the offending object and its type.
    """
    if _is_plain(value):
        return SerializedObject(pickle.dumps(value, protocol=_PROTOCOL), [], [], KIND_PLAIN)
    buffers: list[pickle.PickleBuffer | memoryview] = []
    refs: list[Any] = []
    outer: list[Any] | None = getattr(_tls, "refs", None)
    _tls.refs = refs
    try:
        callback = _buffer_callback(buffers)
        meta = dumps(value, protocol=_PROTOCOL, buffer_callback=callback)
    except Exception as exc:
        raise _serialization_error(value, what, exc) from exc
    finally:
        _tls.refs = outer
    return SerializedObject(meta, buffers, refs, KIND_CLOUDPICKLE)


def _parse(data: bytes | bytearray | memoryview) -> tuple[memoryview, int, int, list[int]]:
    """Check the header; return (view, kind, meta_start, buffer lengths)."""
    view = memoryview(data)
    if view.ndim != 1 or view.format != "B":
        view = view.cast("B")
    if view.nbytes < _HEADER_SIZE:
        raise ValueError(f"not a serialized object: {view.nbytes} bytes is shorter than the header")
    magic, version, kind, nbuf, meta_len = _HEADER.unpack_from(view, 0)
    if magic != _MAGIC or version != _VERSION:
        raise ValueError(
            f"not a serialized object of layout version {_VERSION} "
            f"(magic {bytes(magic)!r}, version {version}); "
            "are both ends running the same rayjupyter version?"
        )
    lengths = list(struct.unpack_from(f"<{nbuf}Q", view, _HEADER_SIZE)) if nbuf else []
    meta_start = _HEADER_SIZE + _LENGTH.size * nbuf
    if meta_start + meta_len > view.nbytes:
        raise ValueError("serialized object is truncated")
    return view, kind, meta_start, [meta_len, *lengths]


def layout_kind(data: bytes | bytearray | memoryview) -> int:
    """KIND_PLAIN or KIND_CLOUDPICKLE: which pickler wrote the meta of this layout."""
    return _parse(data)[1]


def deserialize(data: bytes | bytearray | memoryview) -> Any:
    """Rebuild a value from its flat layout; its buffers are read-only zero-copy slices of data."""
    if type(data) is bytes and len(data) >= _HEADER_SIZE:
        # Hot path for small inline values: one unpack, no buffers, one slice.
        magic, version, _kind, nbuf, meta_len = _HEADER.unpack_from(data, 0)
        if nbuf == 0 and magic == _MAGIC and version == _VERSION:
            end = _HEADER_SIZE + meta_len
            if end <= len(data):
                # Copying a small slice of bytes is cheaper than making a memoryview.
                meta = (
                    data[_HEADER_SIZE:end]
                    if meta_len < 4096
                    else memoryview(data)[_HEADER_SIZE:end]
                )
                return pickle.loads(meta)
    view, _kind, meta_start, lengths = _parse(data)
    meta_len = lengths[0]
    meta = view[meta_start : meta_start + meta_len]
    if len(lengths) == 1:
        return pickle.loads(meta)
    ro = view.toreadonly()  # values read from the store are never writable, as in Ray
    bufs: list[memoryview] = []
    pos = meta_start + meta_len
    for n in lengths[1:]:
        pos = _align(pos)
        if pos + n > view.nbytes:
            raise ValueError("serialized object is truncated")
        bufs.append(ro[pos : pos + n])
        pos += n
    return pickle.loads(meta, buffers=bufs)


def dumps_plain(obj: Any) -> bytes:
    """Pickle trusted control data (protocol 5, C pickler) with no layout header."""
    return pickle.dumps(obj, protocol=_PROTOCOL)


def loads_plain(data: bytes | bytearray | memoryview) -> Any:
    """Inverse of dumps_plain."""
    return pickle.loads(data)


# ----------------------------------------------------------------------------------------
# Error reporting


def _picklable(obj: Any) -> bool:
    try:
        cloudpickle.dump(obj, _NullWriter(), protocol=_PROTOCOL, buffer_callback=_discard)
    except Exception:
        return False
    return True


def _discard(_buf: pickle.PickleBuffer) -> bool:
    return False


class _NullWriter(io.RawIOBase):
    """A sink for trial pickling while looking for the offending object."""

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        return memoryview(b).nbytes


def _children(obj: Any) -> Iterator[tuple[str, Any]]:
    """(path step, child) pairs of a container or plain object, bounded in number."""
    t = type(obj)
    items: Iterator[tuple[str, Any]]
    if isinstance(obj, dict):
        items = ((f"[{k!r}]", v) for k, v in obj.items())
    elif isinstance(obj, (list, tuple)):
        items = ((f"[{i}]", v) for i, v in enumerate(obj))
    elif isinstance(obj, (set, frozenset)):
        items = (("{...}", v) for v in obj)
    elif t.__module__ != "builtins" and isinstance(getattr(obj, "__dict__", None), dict):
        items = ((f".{k}", v) for k, v in vars(obj).items())
    else:
        return
    for n, pair in enumerate(items):
        if n >= _SEARCH_WIDTH:
            return
        yield pair


def _find_culprit(value: Any) -> tuple[Any, str]:
    """The innermost unpicklable part of value and its path (e.g. "['a'][2]"), best effort."""
    path = ""
    current = value
    for _ in range(_SEARCH_DEPTH):
        for step, child in _children(current):
            if not _picklable(child):
                current, path = child, path + step
                break
        else:
            break
    return current, path


def _serialization_error(value: Any, what: str, exc: Exception) -> Exception:
    """Build a SerializationError that names what failed, the culprit and its type."""
    from rayjupyter.core.exceptions import SerializationError

    try:
        culprit, path = _find_culprit(value)
    except Exception:  # the search is a courtesy; never let it mask the real error
        culprit, path = value, ""
    where = what
    if culprit is not value:
        kind = type(value)
        container = kind.__qualname__ if kind.__module__ == "builtins" else kind.__name__
        where = f"{what}, at {path} inside a {container}"
    return SerializationError.for_value(culprit, where, exc)
