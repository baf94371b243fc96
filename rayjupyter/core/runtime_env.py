"""runtime_env from the submitter's side: check it, pack its directories, merge, register.

A notebook's local modules and data files must reach every node ("distributed the work
but not the files"). So ``working_dir`` and each of ``py_modules`` are packed here into a
zip with a fixed order and fixed timestamps, named by the sha256 of its bytes (the same
contents give the same name on every machine), and sent to the node once; the node keeps
them per content hash and starts workers in them (see ``node_runtime_env.py``).

Merging follows Ray: a task's or an actor's fields replace the job's fields of the same
name, except ``env_vars``, merged key by key (the task's value wins). A task submitted
from inside a task or an actor inherits that worker's env.
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import json
import os
import stat
import types
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from rayjupyter.core import protocol as P

if TYPE_CHECKING:
    from rayjupyter.core.client import Client

#: as in Ray: a working_dir or py_module larger than this is refused (use excludes)
MAX_PACKAGE_BYTES = 500 << 20
SIZE_LIMIT_ENV = "RAYJUPYTER_RUNTIME_ENV_MAX_BYTES"  # tests lower it; users may raise it
ALWAYS_EXCLUDED = (".git", "__pycache__", ".ipynb_checkpoints")
SUPPORTED_KEYS = ("env_vars", "excludes", "py_modules", "working_dir")
# Ray's keys that need an installer or a container on each node: named so the error says so
UNSUPPORTED_KEYS = (
    "conda",
    "config",
    "container",
    "image_uri",
    "java_jars",
    "nsight",
    "pip",
    "py_executable",
    "uv",
    "worker_process_setup_hook",
)
#: how the worker learns its env (JSON of ``RuntimeEnv.to_wire``): nested tasks inherit it
WORKER_ENV_VAR = "RAYJUPYTER_RUNTIME_ENV"
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


# ------------------------------------------------------------------ checking


def validate(name: str, value: Any) -> dict[str, Any] | None:
    """Check a runtime_env dict (the option table's validator); paths become absolute."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise TypeError(f"{name} must be a dict, got {value!r}")
    checked: dict[str, Any] = {}
    for key, field_value in value.items():
        if key in UNSUPPORTED_KEYS:
            raise ValueError(
                f"{name}[{key!r}] is not supported by rayjupyter: install what it needs on "
                f"every node instead; supported keys are {', '.join(SUPPORTED_KEYS)}"
            )
        if key not in SUPPORTED_KEYS:
            raise ValueError(
                f"Unknown {name} key {key!r}; valid keys are {', '.join(SUPPORTED_KEYS)}"
            )
        if field_value is None:
            continue
        if key == "working_dir":
            checked[key] = _directory(f"{name}['working_dir']", field_value)
        elif key == "py_modules":
            checked[key] = _py_modules(f"{name}['py_modules']", field_value)
        elif key == "env_vars":
            checked[key] = _env_vars(f"{name}['env_vars']", field_value)
        else:
            checked[key] = _excludes(f"{name}['excludes']", field_value)
    return checked


def _directory(label: str, value: Any) -> str:
    if not isinstance(value, str | os.PathLike):
        raise TypeError(f"{label} must be a path to a local directory, got {value!r}")
    path = os.path.abspath(os.fspath(value))
    if not os.path.isdir(path):
        raise ValueError(
            f"{label} {os.fspath(value)!r} is not a directory ({path}): give an existing "
            f"local directory (remote URIs and zip files are not supported)"
        )
    return path


def _py_modules(label: str, value: Any) -> list[str]:
    if not isinstance(value, list | tuple):
        raise TypeError(f"{label} must be a list of paths or modules, got {value!r}")
    paths = []
    for item in value:
        if isinstance(item, types.ModuleType):
            item = _module_path(label, item)
        if not isinstance(item, str | os.PathLike):
            raise TypeError(f"{label} items must be paths or modules, got {item!r}")
        path = os.path.abspath(os.fspath(item))
        if not (os.path.isdir(path) or (os.path.isfile(path) and path.endswith(".py"))):
            raise ValueError(
                f"{label} item {os.fspath(item)!r} is neither a package directory nor a .py "
                f"file ({path}): give the path of an existing local package or module"
            )
        paths.append(path)
    return paths


def _module_path(label: str, module: types.ModuleType) -> str:
    """A package's directory, or a single-file module's file."""
    file = getattr(module, "__file__", None)
    if not file:
        raise ValueError(f"{label}: module {module.__name__!r} has no file to ship")
    if os.path.basename(file) == "__init__.py":
        return os.path.dirname(str(file))
    return str(file)


def _env_vars(label: str, value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise TypeError(f"{label} must be a dict of str to str, got {value!r}")
    for key, item in value.items():
        if not isinstance(key, str) or not isinstance(item, str):
            raise TypeError(
                f"{label} must map str to str, got {key!r}: {item!r}; convert the value "
                f"with str() (environment variables are strings)"
            )
    return dict(value)


def _excludes(label: str, value: Any) -> list[str]:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise TypeError(f"{label} must be a list of path patterns, got {value!r}")
    return list(value)


# ------------------------------------------------------------------ packing


class Package(NamedTuple):  # (immutable: a frozen dataclass costs the node ~8x more)
    """A packed directory or module: a zip, named by the sha256 of its bytes."""

    digest: str
    blob: bytes


def _excluded(relpath: str, patterns: tuple[str, ...]) -> bool:
    """gitignore-like: a pattern matches the whole relative path or any one component."""
    parts = relpath.split("/")
    for pattern in patterns:
        pattern = pattern.strip("/")
        if fnmatch.fnmatch(relpath, pattern) or any(fnmatch.fnmatch(p, pattern) for p in parts):
            return True
    return False


def _files(root: str, prefix: str, excludes: tuple[str, ...]) -> Iterator[tuple[str, str]]:
    """(path on disk, name in the zip) of every file under root, sorted, minus excludes."""
    patterns = ALWAYS_EXCLUDED + excludes
    if os.path.isfile(root):
        yield root, prefix
        return
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root).replace(os.sep, "/")
        rel_dir = "" if rel_dir == "." else rel_dir + "/"
        dirnames[:] = sorted(d for d in dirnames if not _excluded(rel_dir + d, patterns))
        for filename in sorted(filenames):
            rel = rel_dir + filename
            if not _excluded(rel, patterns):
                yield os.path.join(dirpath, filename), prefix + rel


def _size_limit() -> int:
    return int(os.environ.get(SIZE_LIMIT_ENV, MAX_PACKAGE_BYTES))


def pack(path: str, *, top: str = "", excludes: tuple[str, ...] = (), what: str) -> Package:
    """Zip a directory (its contents at the root, or under ``top/``) or one file (as
    ``top``), in a fixed order with fixed timestamps, so equal contents give equal bytes."""
    prefix = top if os.path.isfile(path) else (top + "/" if top else "")
    entries = []
    total = 0
    for disk_path, name in _files(path, prefix, excludes):
        try:
            info = os.stat(disk_path)
        except FileNotFoundError:
            continue  # a dangling symlink, or removed while we walk
        if not stat.S_ISREG(info.st_mode):
            continue
        total += info.st_size
        entries.append((disk_path, name, info.st_mode))
    limit = _size_limit()
    if total > limit:
        raise ValueError(
            f"{what} {path!r} holds {total / 2**20:.1f} MiB, over the {limit / 2**20:.0f} MiB "
            f"limit: list large files or folders in runtime_env['excludes'] (e.g. 'data/', "
            f"'*.parquet') or move them out"
        )
    import zipfile  # only where a package is made: zipfile costs every driver ~5 ms at import

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for disk_path, name, mode in entries:
            member = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
            member.external_attr = (stat.S_IFREG | (mode & 0o755) | 0o644) << 16
            member.compress_type = zipfile.ZIP_DEFLATED
            with open(disk_path, "rb") as source:
                archive.writestr(member, source.read(), compresslevel=1)
    blob = buffer.getvalue()
    return Package(hashlib.sha256(blob).hexdigest(), blob)


def _signature(path: str, excludes: tuple[str, ...]) -> tuple[Any, ...]:
    """Cheap change detection: names, sizes and mtimes (a walk, no reads)."""
    rows = []
    for disk_path, name in _files(path, "", excludes):
        try:
            info = os.stat(disk_path)
        except FileNotFoundError:
            continue
        rows.append((name, info.st_size, info.st_mtime_ns, info.st_mode))
    return tuple(rows)


# packed directories of this process, so that a loop of .options(runtime_env=...) packs once
_packed: OrderedDict[tuple[Any, ...], Package] = OrderedDict()
_PACKED_KEEP = 8


def _pack_cached(path: str, top: str, excludes: tuple[str, ...], what: str) -> Package:
    key = (path, top, excludes, _signature(path, excludes))
    package = _packed.get(key)
    if package is None:
        package = _packed[key] = pack(path, top=top, excludes=excludes, what=what)
        while len(_packed) > _PACKED_KEEP:
            _packed.popitem(last=False)
    _packed.move_to_end(key)
    return package


def clear_cache() -> None:
    """Forget packed directories (rj.shutdown): a later init packs them afresh."""
    _packed.clear()


# ------------------------------------------------------------------ resolved envs


class RuntimeEnv(NamedTuple):  # (immutable: a frozen dataclass costs the node ~8x more)
    """An env as nodes see it: package digests and variables; None marks a field not given
    (so that merging knows what to keep from the parent)."""

    working_dir: str | None = None
    py_modules: tuple[str, ...] | None = None
    env_vars: tuple[tuple[str, str], ...] | None = None

    def merged_into(self, parent: RuntimeEnv | None) -> RuntimeEnv:
        """This env's fields over the parent's; env_vars merged key by key (ours win)."""
        if parent is None:
            return self
        env_vars = parent.env_vars
        if self.env_vars is not None:
            env_vars = tuple(sorted({**dict(parent.env_vars or ()), **dict(self.env_vars)}.items()))
        return RuntimeEnv(
            self.working_dir if self.working_dir is not None else parent.working_dir,
            self.py_modules if self.py_modules is not None else parent.py_modules,
            env_vars,
        )

    def to_wire(self) -> list[Any]:
        return [self.working_dir or "", list(self.py_modules or ()), list(self.env_vars or ())]

    @classmethod
    def from_wire(cls, wire: list[Any]) -> RuntimeEnv:
        working_dir, py_modules, env_vars = wire
        return cls(working_dir, tuple(py_modules), tuple(tuple(kv) for kv in env_vars))

    @property
    def empty(self) -> bool:
        return not (self.working_dir or self.py_modules or self.env_vars)

    @property
    def digest(self) -> str:
        """What tasks and workers are keyed by: "" for no env (the plain worker pool)."""
        if self.empty:
            return ""
        text = json.dumps(self.to_wire(), separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:32]


def resolve(spec: Mapping[str, Any]) -> tuple[RuntimeEnv, dict[str, bytes]]:
    """Pack a checked runtime_env dict: the env (only the fields given) and its packages."""
    excludes = tuple(spec.get("excludes") or ())
    packages: dict[str, bytes] = {}
    working_dir: str | None = None
    py_modules: tuple[str, ...] | None = None
    env_vars: tuple[tuple[str, str], ...] | None = None
    if spec.get("working_dir"):
        package = _pack_cached(spec["working_dir"], "", excludes, "runtime_env working_dir")
        packages[package.digest] = package.blob
        working_dir = package.digest
    if spec.get("py_modules") is not None:
        digests = []
        for path in spec["py_modules"]:
            top = os.path.basename(path.rstrip(os.sep))
            package = _pack_cached(path, top, excludes, "runtime_env py_module")
            packages[package.digest] = package.blob
            digests.append(package.digest)
        py_modules = tuple(digests)
    if spec.get("env_vars") is not None:
        env_vars = tuple(sorted(spec["env_vars"].items()))
    return RuntimeEnv(working_dir, py_modules, env_vars), packages


def job_env_of_worker() -> RuntimeEnv | None:
    """In a worker: the env it was started with, inherited by the tasks it submits."""
    wire = os.environ.get(WORKER_ENV_VAR)
    return RuntimeEnv.from_wire(json.loads(wire)) if wire else None


def register(client: Client, env: RuntimeEnv, packages: Mapping[str, bytes]) -> str:
    """Make sure the client's node knows the env (uploading only the packages it lacks);
    returns the env's digest. Two round trips the first time, none after."""
    digest = env.digest
    if not digest or digest in client.sent_envs:
        return digest
    message = P.RegisterRuntimeEnv(
        0, digest, env.working_dir or "", tuple(env.py_modules or ()), dict(env.env_vars or ())
    )
    request_id = client.new_request_id()
    client.send([message._replace(request_id=request_id)])
    missing = client.await_reply(request_id, "register runtime_env", timeout=60.0)
    if missing:
        lost = [d for d in missing if d not in packages]
        if lost:  # inherited from a parent env the node no longer has: cannot happen normally
            raise RuntimeError(f"runtime_env packages {lost} are unknown to the node")
        uploads = [P.UploadPackage(d, packages[d]) for d in missing]
        request_id = client.new_request_id()
        client.send([*uploads, message._replace(request_id=request_id)])
        still = client.await_reply(request_id, "upload runtime_env", timeout=300.0)
        if still:
            raise RuntimeError(f"the node did not keep runtime_env packages {still}")
    client.sent_envs.add(digest)
    return digest


def env_for(client: Client, spec: Mapping[str, Any] | None) -> str:
    """The digest of the env a task or actor with this runtime_env option runs in."""
    job_env: RuntimeEnv | None = client.runtime_env
    if spec is None:
        return job_env.digest if job_env is not None else ""
    env, packages = resolve(spec)
    return register(client, env.merged_into(job_env), packages)
