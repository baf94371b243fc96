"""runtime_env on a node: the package cache, workers started in an env, envs sent to peers.

A part of the node daemon (``Node.envs``). Packages (zips of a working_dir or a py_module,
named by the sha256 of their bytes) are cached in ``<session dir>/runtime_resources/``: the
zip, kept to send on to peers, and the directory it is extracted into, once; a second driver
with the same contents finds both there and uploads nothing. A worker for an env is forked
like any other, then (in the child, before it connects) changes into the extracted
working_dir, puts it and the py_modules first on sys.path and sets the env's variables
(``worker.py``). Idle workers of an env are reaped after a while, or sooner when envs crowd
the machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import shutil
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, Protocol

from rayjupyter.core import protocol as P
from rayjupyter.core.config import session_dir
from rayjupyter.core.exceptions import RuntimeEnvSetupError
from rayjupyter.core.runtime_env import WORKER_ENV_VAR, RuntimeEnv
from rayjupyter.core.scheduler import TaskRecord

WORKING_DIR_VAR = "RAYJUPYTER_WORKING_DIR"
ENV_PATHS_VAR = "RAYJUPYTER_ENV_PATHS"
_VAR_REF = re.compile(r"\$\{(\w+)\}")
_DIGEST = re.compile(r"[0-9a-f]{64}")


class EnvRecord(NamedTuple):  # (immutable: a frozen dataclass costs the node ~8x more)
    """A registered env: its packages and variables."""

    working_dir: str
    py_modules: tuple[str, ...]
    env_vars: dict[str, str]

    def packages(self) -> list[str]:
        return [d for d in (self.working_dir, *self.py_modules) if d]


class Link(Protocol):
    """What sending an env to a peer needs of its link (``node_links.PeerLink``)."""

    client_id: bytes

    def send(self, message: Any) -> None: ...


class ActorOptions(Protocol):
    """What an env needs of an actor's record (``node_actors.ActorRecord``)."""

    options: dict[str, Any]


class NodeRuntimeEnv:
    """Package cache, env registry, what a worker of an env starts with, envs for peers."""

    def __init__(
        self,
        session: str,
        address: str,
        actors: Mapping[bytes, ActorOptions],
        send: Callable[[bytes, Any], None],
    ) -> None:
        self.address = address
        self.actors = actors  # the node's actor table: an actor's env is in its options
        self.send = send
        self.runtime_envs: dict[str, EnvRecord] = {}
        self.package_errors: dict[str, str] = {}  # digest -> why it could not be set up
        self.env_failures: dict[str, str] = {}  # env -> why it could not be registered
        # per link (a new link, to a restarted peer, starts empty): what the peer has from us
        self.envs_sent: dict[bytes, set[str]] = {}
        self.packages_sent: dict[bytes, set[str]] = {}
        self.package_root = os.path.join(session_dir(session), "runtime_resources")

    def package_dir(self, digest: str) -> str:
        """Where a package is extracted (on sys.path of its workers)."""
        return os.path.join(self.package_root, digest)

    # ------------------------------------------------------------------ handlers

    def on_upload_package(self, client: bytes, message: P.UploadPackage) -> None:
        digest = message.digest
        if os.path.isdir(self.package_dir(digest)):
            return  # extracted before, for this driver or another
        if not _DIGEST.fullmatch(digest):
            return
        if hashlib.sha256(message.blob).hexdigest() != digest:
            self.package_errors[digest] = "its bytes do not match its sha256 (corrupted)"
            return
        # imported here, where a package arrives: zipfile and tempfile cost every node's start
        # a millisecond (and their memory in every worker forked from it)
        import zipfile

        try:
            self._store_package(digest, message.blob)
        except (OSError, zipfile.BadZipFile) as exc:
            self.package_errors[digest] = f"it could not be unpacked on this node ({exc})"
        else:
            self.package_errors.pop(digest, None)

    def _store_package(self, digest: str, blob: bytes) -> None:
        """Keep the zip (for peers) and extract it, each renamed into place when complete,
        so that a crash or a second upload never leaves half a package."""
        import tempfile
        import zipfile

        os.makedirs(self.package_root, mode=0o700, exist_ok=True)
        zip_path = self.package_dir(digest) + ".zip"
        if not os.path.exists(zip_path):
            fd, tmp = tempfile.mkstemp(dir=self.package_root, suffix=".part")
            with os.fdopen(fd, "wb") as out:
                out.write(blob)
            os.replace(tmp, zip_path)
        staging = tempfile.mkdtemp(dir=self.package_root, prefix=".extract-")
        try:
            with zipfile.ZipFile(zip_path) as archive:
                for member in archive.infolist():
                    target = os.path.realpath(os.path.join(staging, member.filename))
                    if not target.startswith(os.path.realpath(staging) + os.sep):
                        raise OSError(f"unsafe path in package: {member.filename!r}")
                    archive.extract(member, staging)
                    mode = (member.external_attr >> 16) & 0o777
                    if mode and not member.is_dir():
                        os.chmod(target, mode)
            os.rename(staging, self.package_dir(digest))
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    def on_register_runtime_env(self, client: bytes, message: P.RegisterRuntimeEnv) -> None:
        record = EnvRecord(message.working_dir, tuple(message.py_modules), dict(message.env_vars))
        reply: Any = ()
        packages = record.packages()
        if not all(_DIGEST.fullmatch(d) for d in packages):
            errors = ["is named by something other than a sha256"]
        else:
            errors = [self.package_errors[d] for d in packages if d in self.package_errors]
        missing = tuple(d for d in packages if not os.path.isdir(self.package_dir(d)))
        if errors:
            reply = RuntimeEnvSetupError(
                f"The runtime_env could not be set up on node {self.address}: a package of it "
                f"{errors[0]}; check the disk space under {self.package_root}."
            )
            self.env_failures[message.env] = str(reply)
        elif missing:
            reply = missing  # the sender uploads these and registers again
            if not message.request_id:  # a peer sends the packages first: they never came
                self.env_failures[message.env] = (
                    f"The runtime_env's packages never reached node {self.address}."
                )
        else:
            self.runtime_envs[message.env] = record
            self.env_failures.pop(message.env, None)
        if message.request_id:
            self.send(client, P.Reply(message.request_id, reply))

    # ------------------------------------------------------------------ tasks and workers

    def env_error(self, task: TaskRecord) -> bytes | None:
        """A pickled RuntimeEnvSetupError if the task (or actor) names an env not set up here."""
        env = task.env
        if task.method == "__init__" and task.actor_id in self.actors:
            env = str(self.actors[task.actor_id].options.get("runtime_env") or "")
        if not env or env in self.runtime_envs:
            return None
        error = RuntimeEnvSetupError(
            self.env_failures.get(env)
            or f"Task {task.name!r} names runtime_env {env}, which node {self.address} does "
            f"not have: it must be registered first (rayjupyter's own submit path does this)."
        )
        return pickle.dumps(error, protocol=5)

    def actor_env(self, actor_id: bytes) -> str:
        actor = self.actors.get(actor_id)
        return str(actor.options.get("runtime_env") or "") if actor is not None else ""

    def env_process_vars(self, env: str) -> dict[str, str]:
        """The environment a worker of this env starts with (added to the node's own)."""
        record = self.runtime_envs[env]
        variables = {
            key: _VAR_REF.sub(lambda m: os.environ.get(m.group(1), ""), value)
            for key, value in record.env_vars.items()
        }
        paths = [self.package_dir(d) for d in record.packages()]
        extra = variables.get("PYTHONPATH", "")
        paths += [p for p in extra.split(os.pathsep) if p]  # the worker runs already
        wire = RuntimeEnv(
            record.working_dir or None,
            record.py_modules,
            tuple(sorted(record.env_vars.items())),
        ).to_wire()
        variables[ENV_PATHS_VAR] = json.dumps(paths)
        variables[WORKING_DIR_VAR] = (
            self.package_dir(record.working_dir) if record.working_dir else ""
        )
        variables[WORKER_ENV_VAR] = json.dumps(wire)
        return variables

    # ------------------------------------------------------------------ peers

    def send_runtime_env(self, link: Link, env: str) -> None:
        """Before a task or actor of this env goes to a peer: its packages and the env,
        once per peer (queued on the link ahead of the task)."""
        sent_envs = self.envs_sent.setdefault(link.client_id, set())
        if not env or env in sent_envs:
            return
        record = self.runtime_envs.get(env)
        if record is None:
            return  # the peer fails the task with RuntimeEnvSetupError
        sent = self.packages_sent.setdefault(link.client_id, set())
        for digest in record.packages():
            if digest in sent:
                continue
            try:
                with open(self.package_dir(digest) + ".zip", "rb") as source:
                    blob = source.read()
            except OSError:
                continue  # the peer answers the task with RuntimeEnvSetupError
            link.send(P.UploadPackage(digest, blob))
            sent.add(digest)
        link.send(
            P.RegisterRuntimeEnv(0, env, record.working_dir, record.py_modules, record.env_vars)
        )
        sent_envs.add(env)
