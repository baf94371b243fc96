#!/usr/bin/env python3
"""Many hosts on one machine: a bridge and N network namespaces, each with its own IP (root).

Tests use it to run a real multi-host cluster on one machine and to cut one host's link.
As a module: ``with Netns.up(3) as net: net.run(1, [...])``. As a script:
``python runtime/netns.py up 3`` / ``exec 2 -- CMD`` / ``cut 2`` / ``restore 2`` / ``down``.

Every run gets its own name (``rjn`` + 5 hex digits, or one you pick): namespaces are
``NAME-1`` .. ``NAME-N``, the bridge ``NAMEbr``, the host ends of the veth pairs ``NAMEh<i>``;
inside namespace i the link is ``eth0`` with ``10.88.X.i/24`` (X: the first /24 of 10.88/16
that nothing on this machine uses) and the bridge holds ``10.88.X.254``, so the host reaches
every namespace too. A record per run in /run/rayjupyter-netns (written before anything is
created) names its owner process; a later ``up`` or ``cleanup_stale()`` tears down the runs
whose owner died, processes inside included.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import functools
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

PREFIX = "rjn"
# interface names have 15 characters at most: NAME + "h" + index must fit
_NAME_RE = re.compile(r"^[a-z][a-z0-9]{1,9}$")
MAX_NODES = 250
HOST_OCTET = 254
STATE_DIR = Path(os.environ.get("RAYJUPYTER_NETNS_STATE", "/run/rayjupyter-netns"))
# the /16 whose free /24s runs take; override where 10.88/16 is taken (podman uses it)
BASE = ipaddress.ip_network(os.environ.get("RAYJUPYTER_NETNS_BASE", "10.88.0.0/16"))
_CMD_TIMEOUT_S = 15.0
_BRIDGE_NF = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")


class NetnsError(RuntimeError):
    """A namespace network could not be built, used or torn down; the message names the fix."""


def _run(argv: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run one iproute2/tc/iptables command, bounded; NetnsError with its stderr on failure."""
    try:
        done = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=_CMD_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetnsError(f"`{' '.join(argv)}` failed: {exc}") from exc
    if check and done.returncode != 0:
        detail = (done.stderr or done.stdout).strip()
        raise NetnsError(f"`{' '.join(argv)}` failed: {detail}")
    return done


@functools.cache
def available() -> tuple[bool, str]:
    """(True, "") where namespaces, bridges and veth pairs can be made here, else (False, why)."""
    if not sys.platform.startswith("linux"):
        return False, "network namespaces need Linux"
    if shutil.which("ip") is None:
        return False, "the `ip` command is missing: install iproute2"
    if os.geteuid() != 0:
        return False, "network namespaces need root (CAP_SYS_ADMIN, CAP_NET_ADMIN): run as root"
    probe = f"rjp{secrets.token_hex(3)}"
    try:
        _run(["ip", "netns", "add", f"{probe}-1"])
        _run(["ip", "netns", "exec", f"{probe}-1", "true"])
        _run(["ip", "link", "add", f"{probe}br", "type", "bridge"])
        _run(["ip", "link", "add", f"{probe}h1", "type", "veth", "peer", "name", f"{probe}n1"])
    except NetnsError as exc:
        return False, f"cannot build namespace networks here: {exc}"
    finally:
        teardown(probe)
    return True, ""


def netem_available() -> bool:
    """True where `tc ... netem` works (kernel module sch_netem), which cut(how='loss') needs."""
    return _netem_probe()


@functools.cache
def _netem_probe() -> bool:
    if shutil.which("tc") is None or not available()[0]:
        return False
    probe = f"rjp{secrets.token_hex(3)}"
    try:
        _run(["ip", "link", "add", f"{probe}h1", "type", "veth", "peer", "name", f"{probe}n1"])
        _run(["tc", "qdisc", "add", "dev", f"{probe}h1", "root", "netem", "loss", "100%"])
    except NetnsError:
        return False
    finally:
        teardown(probe)
    return True


# ----------------------------------------------------------------------------- records


@dataclass(frozen=True)
class _Record:
    """What a run wrote before building anything: enough to find and remove all of it."""

    name: str
    n: int
    subnet: str  # "10.88.0.0/24"
    host_ip: bool  # whether the bridge holds .254
    owner_pid: int | None  # None: made by the script, lives until `down`
    owner_started: float | None  # the owner's create_time, so a reused PID is not the owner

    def path(self) -> Path:
        return STATE_DIR / f"{self.name}.json"

    def owner_alive(self) -> bool:
        """True while the process that made this run lives (always True for script-made runs)."""
        if self.owner_pid is None:
            return True
        try:
            proc = psutil.Process(self.owner_pid)
            return (
                proc.status() != psutil.STATUS_ZOMBIE
                and abs(proc.create_time() - (self.owner_started or 0.0)) < 0.01
            )
        except psutil.Error:
            return False


def _read_record(name: str) -> _Record | None:
    try:
        data = json.loads((STATE_DIR / f"{name}.json").read_text())
        return _Record(**data)
    except (OSError, ValueError, TypeError):
        return None


def _records() -> list[_Record]:
    if not STATE_DIR.is_dir():
        return []
    found = [_read_record(path.stem) for path in sorted(STATE_DIR.glob("*.json"))]
    return [rec for rec in found if rec is not None]


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """Serialize record changes between parallel runs (one flock; do not nest)."""
    STATE_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(STATE_DIR / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# ----------------------------------------------------------------------------- host state


def _namespaces() -> list[str]:
    out = _run(["ip", "netns", "list"], check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _links() -> list[str]:
    out = _run(["ip", "-o", "link", "show"], check=False).stdout
    names = []
    for line in out.splitlines():
        parts = line.split(":", 2)
        if len(parts) >= 2:
            names.append(parts[1].strip().split("@")[0])
    return names


def _used_networks() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network this machine routes or holds an address in (the default route aside)."""
    nets: list[ipaddress.IPv4Network] = []
    routes = _run(["ip", "-4", "-o", "route", "show", "table", "all"], check=False).stdout
    addrs = _run(["ip", "-4", "-o", "addr", "show"], check=False).stdout
    words = [line.split()[0] for line in routes.splitlines() if line.split()]
    words += [word for line in addrs.splitlines() for word in line.split()[3:4]]
    for word in words:
        with contextlib.suppress(ValueError):
            net = ipaddress.ip_network(word, strict=False)
            if isinstance(net, ipaddress.IPv4Network) and net.prefixlen > 0:
                nets.append(net)
    return nets


def _free_subnet() -> ipaddress.IPv4Network:
    taken = _used_networks() + [ipaddress.IPv4Network(rec.subnet) for rec in _records()]
    for candidate in BASE.subnets(new_prefix=24):
        if not any(candidate.overlaps(net) for net in taken):
            return candidate  # type: ignore[return-value]
    raise NetnsError(f"no free /24 left in {BASE}: set RAYJUPYTER_NETNS_BASE to a free /16")


def _forward_rule(name: str) -> list[str] | None:
    """The iptables rule that lets the bridge forward to itself, where a firewall would filter.

    With br_netfilter loaded, bridged frames pass iptables FORWARD, which Docker sets to DROP.
    """
    try:
        filtered = _BRIDGE_NF.read_text().strip() == "1"
    except OSError:
        filtered = False
    if not filtered or shutil.which("iptables") is None:
        return None
    bridge = f"{name}br"
    comment = ["-m", "comment", "--comment", f"rayjupyter-netns {name}"]
    return ["FORWARD", "-i", bridge, "-o", bridge, *comment, "-j", "ACCEPT"]


def _wait_gone(pids: Sequence[int], timeout: float) -> list[int]:
    """Wait until none of pids runs (zombies count as gone and are reaped); the survivors."""
    deadline = time.monotonic() + timeout
    left = list(pids)
    while True:
        still = []
        for pid in left:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    still.append(pid)
                    continue
            except psutil.Error:
                continue
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)
        left = still
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.02)


def _namespace_pids(namespace: str) -> list[int]:
    out = _run(["ip", "netns", "pids", namespace], check=False).stdout
    return [int(word) for word in out.split() if word.isdigit()]


def teardown(name: str) -> None:
    """Remove everything a run called `name` made: processes, namespaces, links, rules, record.

    Idempotent, and works from names alone, so it also clears a crashed run's leftovers.
    """
    if not _NAME_RE.match(name):
        raise ValueError(f"bad network name {name!r}: 2-10 lowercase letters/digits")
    owned_ns = re.compile(rf"^{re.escape(name)}-\d+$")
    namespaces = [ns for ns in _namespaces() if owned_ns.match(ns)]
    pids = [pid for ns in namespaces for pid in _namespace_pids(ns)]
    for pid in pids:  # processes inside our own namespaces: ours by construction
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    survivors = _wait_gone(pids, timeout=10.0)
    for ns in namespaces:
        _run(["ip", "netns", "del", ns], check=False)
    owned_link = re.compile(rf"^{re.escape(name)}(br|h\d+|n\d+)$")
    for link in _links():
        if owned_link.match(link):
            _run(["ip", "link", "del", link], check=False)
    rule = _forward_rule(name)
    if rule is not None:
        for _ in range(8):  # one per `up` at most; a few in case of repeated crashes
            if _run(["iptables", "-w", "-D", *rule], check=False).returncode != 0:
                break
    with contextlib.suppress(OSError):
        (STATE_DIR / f"{name}.json").unlink()
    left_ns = [ns for ns in _namespaces() if owned_ns.match(ns)]
    left_links = [link for link in _links() if owned_link.match(link)]
    if survivors or left_ns or left_links:
        raise NetnsError(
            f"could not tear down network {name}: processes {survivors}, namespaces {left_ns},"
            f" links {left_links} remain; remove them with `ip netns del` / `ip link del`"
        )


def _cleanup_stale_locked() -> list[str]:
    removed = []
    recorded = set()
    for rec in _records():
        recorded.add(rec.name)
        if rec.owner_pid is not None and not rec.owner_alive():
            teardown(rec.name)
            removed.append(rec.name)
    # names of the default pattern with no record: a record is written before anything is
    # created, so these are leftovers (e.g. the state directory was wiped)
    pattern = re.compile(rf"^({PREFIX}[0-9a-f]{{5}})(-\d+|br|h\d+|n\d+)$")
    orphans = {m.group(1) for m in map(pattern.match, _namespaces() + _links()) if m}
    for name in sorted(orphans - recorded):
        teardown(name)
        removed.append(name)
    return removed


def cleanup_stale() -> list[str]:
    """Tear down every run whose owner process died (and unrecorded leftovers); their names."""
    with _locked():
        return _cleanup_stale_locked()


# ----------------------------------------------------------------------------- the network


class Netns:
    """A bridge with N namespaces on it; namespace i (1-based) has IP ``ip(i)``.

    Build one with ``Netns.up(n)``; ``down()`` (or leaving the ``with`` block) removes it all.
    """

    def __init__(self, record: _Record) -> None:
        self.name = record.name
        self.n = record.n
        self.subnet = ipaddress.IPv4Network(record.subnet)
        self._record = record
        self._procs: list[subprocess.Popen[Any]] = []

    # -- life cycle

    @classmethod
    def up(cls, n: int, name: str | None = None, *, host_ip: bool = True) -> Netns:
        """Build a bridge and n namespaces; owned by this process (torn down if it dies)."""
        return cls._up(n, name, host_ip=host_ip, owner_pid=os.getpid())

    @classmethod
    def _up(cls, n: int, name: str | None, *, host_ip: bool, owner_pid: int | None) -> Netns:
        ok, reason = available()
        if not ok:
            raise NetnsError(reason)
        if not 1 <= n <= MAX_NODES:
            raise ValueError(f"n must be between 1 and {MAX_NODES}, not {n}")
        if name is not None and not _NAME_RE.match(name):
            raise ValueError(f"bad network name {name!r}: 2-10 lowercase letters/digits")
        with _locked():
            _cleanup_stale_locked()
            if name is None:
                name = cls._new_name()
            else:
                existing = _read_record(name)
                if existing is not None and existing.owner_alive():
                    raise NetnsError(
                        f"network {name} is already up: pick another name, or"
                        f" `python runtime/netns.py down {name}` first"
                    )
                teardown(name)  # a previous run's leftovers under this name
            started = psutil.Process(owner_pid).create_time() if owner_pid else None
            record = _Record(name, n, str(_free_subnet()), host_ip, owner_pid, started)
            record.path().write_text(json.dumps(record.__dict__))
        net = cls(record)
        try:
            net._build()
        except BaseException:
            net.down()
            raise
        return net

    @staticmethod
    def _new_name() -> str:
        taken = set(_namespaces()) | set(_links())
        for _ in range(100):
            name = f"{PREFIX}{secrets.token_hex(3)[:5]}"
            if not (STATE_DIR / f"{name}.json").exists() and f"{name}br" not in taken:
                return name
        raise NetnsError("could not pick a free network name")

    @classmethod
    def attach(cls, name: str) -> Netns:
        """The running network `name` (made by another process or the script)."""
        record = _read_record(name)
        if record is None:
            raise NetnsError(f"no network {name} is up: `python runtime/netns.py list` shows them")
        return cls(record)

    def _build(self) -> None:
        bridge = self.bridge
        _run(["ip", "link", "add", bridge, "type", "bridge"])
        _run(["ip", "link", "set", bridge, "up"])
        if self.host_address is not None:
            addr = f"{self.host_address}/{self.subnet.prefixlen}"
            _run(["ip", "addr", "add", addr, "dev", bridge])
        rule = _forward_rule(self.name)
        if rule is not None:
            _run(["iptables", "-w", "-I", *rule])
        for i in range(1, self.n + 1):
            ns, host_end = self.namespace(i), self._host_end(i)
            _run(["ip", "netns", "add", ns])
            _run(
                ["ip", "link", "add", host_end, "type", "veth", "peer", "name", "eth0", "netns", ns]
            )
            _run(["ip", "link", "set", host_end, "master", bridge])
            _run(["ip", "link", "set", host_end, "up"])
            _run(["ip", "-n", ns, "addr", "add", f"{self.ip(i)}/24", "dev", "eth0"])
            _run(["ip", "-n", ns, "link", "set", "eth0", "up"])
            _run(["ip", "-n", ns, "link", "set", "lo", "up"])

    def down(self) -> None:
        """Stop the processes started here, then remove namespaces, links, record (idempotent)."""
        for proc in list(self._procs):
            self.kill(proc, graceful=False)
        self._procs.clear()
        teardown(self.name)

    def __enter__(self) -> Netns:
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    # -- addresses

    @property
    def bridge(self) -> str:
        """The bridge's interface name in the host namespace."""
        return f"{self.name}br"

    @property
    def host_address(self) -> str | None:
        """The host's own IP on the bridge (.254), or None when built with host_ip=False."""
        return str(self.subnet[HOST_OCTET]) if self._record.host_ip else None

    def namespace(self, i: int) -> str:
        """The name of namespace i, for `ip netns exec`."""
        self._check(i)
        return f"{self.name}-{i}"

    def ip(self, i: int) -> str:
        """The IPv4 address of namespace i on the bridge."""
        self._check(i)
        return str(self.subnet[i])

    def _host_end(self, i: int) -> str:
        self._check(i)
        return f"{self.name}h{i}"

    def _check(self, i: int) -> None:
        if not 1 <= i <= self.n:
            raise IndexError(f"namespace {i} does not exist: this network has 1..{self.n}")

    # -- processes

    def run(self, i: int, argv: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen[Any]:
        """Start argv inside namespace i; the Popen's pid is argv's own (ip netns exec execs)."""
        self._procs = [known for known in self._procs if known.poll() is None]
        proc = subprocess.Popen(["ip", "netns", "exec", self.namespace(i), *argv], **popen_kwargs)
        self._procs.append(proc)
        return proc

    def kill(
        self, proc: subprocess.Popen[Any], *, graceful: bool = True, timeout: float = 5.0
    ) -> None:
        """End proc and its descendants by PID: SIGTERM then SIGKILL, or SIGKILL at once."""
        if proc.poll() is not None:  # already reaped: its PID may be someone else's by now
            with contextlib.suppress(ValueError):
                self._procs.remove(proc)
            return
        try:
            family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(True)]
        except psutil.Error:
            family = []
        if graceful and proc.poll() is None:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout)
        for member in family:
            with contextlib.suppress(psutil.Error):
                member.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout)
        survivors = _wait_gone([member.pid for member in family], timeout)
        if proc.poll() is None or survivors:
            raise NetnsError(f"processes {survivors or [proc.pid]} survived SIGKILL")
        if proc in self._procs:
            self._procs.remove(proc)

    def pids(self, i: int) -> list[int]:
        """PIDs of every process now inside namespace i."""
        return _namespace_pids(self.namespace(i))

    # -- faults

    def cut(self, i: int, how: str = "down") -> None:
        """Cut namespace i off the bridge: its host veth end down, or netem dropping all traffic.

        Both ways packets vanish silently (no reset), like a pulled cable or a partition.
        """
        host_end = self._host_end(i)
        if how == "down":
            _run(["ip", "link", "set", host_end, "down"])
        elif how == "loss":
            if not netem_available():
                raise NetnsError(
                    "tc netem is unavailable (kernel module sch_netem): use how='down'"
                )
            _run(["tc", "qdisc", "replace", "dev", host_end, "root", "netem", "loss", "100%"])
            _run(
                [
                    "tc",
                    "-n",
                    self.namespace(i),
                    "qdisc",
                    "replace",
                    "dev",
                    "eth0",
                    "root",
                    "netem",
                    "loss",
                    "100%",
                ]
            )
        else:
            raise ValueError(f"how must be 'down' or 'loss', not {how!r}")

    def restore(self, i: int, timeout: float = 10.0) -> None:
        """Undo cut(i) (either way) and wait until the link carries traffic again."""
        host_end = self._host_end(i)
        if shutil.which("tc") is not None:
            _run(["tc", "qdisc", "del", "dev", host_end, "root"], check=False)
            _run(
                ["tc", "-n", self.namespace(i), "qdisc", "del", "dev", "eth0", "root"], check=False
            )
        _run(["ip", "link", "set", host_end, "up"])
        deadline = time.monotonic() + timeout
        while not self.link_up(i):
            if time.monotonic() >= deadline:
                raise NetnsError(f"link {host_end} did not come back up within {timeout}s")
            time.sleep(0.02)

    def link_up(self, i: int) -> bool:
        """True while namespace i's host veth end is up with carrier (netem loss aside)."""
        out = _run(["ip", "-o", "link", "show", self._host_end(i)], check=False).stdout
        return "state UP" in out


# ----------------------------------------------------------------------------- script


def _pick(name: str | None) -> Netns:
    if name is not None:
        return Netns.attach(name)
    recs = _records()
    if len(recs) != 1:
        names = ", ".join(rec.name for rec in recs) or "none"
        raise NetnsError(f"{len(recs)} networks are up ({names}): name one with --name")
    return Netns(recs[0])


def main(argv: Sequence[str] | None = None) -> int:
    """The script: up, down, list, exec, cut, restore."""
    parser = argparse.ArgumentParser(prog="netns.py", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="build a bridge and N namespaces (lives until `down`)")
    p_up.add_argument("n", type=int)
    p_up.add_argument("--name", help="2-10 lowercase letters/digits (default: random rjn...)")
    p_up.add_argument("--no-host-ip", action="store_true", help="no host address on the bridge")
    p_up.add_argument("--json", action="store_true", help="print the layout as JSON")
    p_down = sub.add_parser("down", help="tear down NAME, or every script-made or stale network")
    p_down.add_argument("name", nargs="?")
    sub.add_parser("list", help="the networks on record")
    p_exec = sub.add_parser("exec", help="run a command inside namespace I")
    p_exec.add_argument("i", type=int)
    p_exec.add_argument("cmd", nargs=argparse.REMAINDER)
    for cmd in ("cut", "restore"):
        p = sub.add_parser(cmd, help=f"{cmd} namespace I's link")
        p.add_argument("i", type=int)
        if cmd == "cut":
            p.add_argument("--how", choices=("down", "loss"), default="down")
        p.add_argument("--name", help="the network (needed when several are up)")
    p_exec.add_argument("--name", help="the network (needed when several are up)")
    args = parser.parse_args(argv)
    try:
        return _main(args)
    except (NetnsError, ValueError, IndexError) as exc:
        print(f"netns.py: {exc}", file=sys.stderr)
        return 1


def _main(args: argparse.Namespace) -> int:
    if args.command == "up":
        net = Netns._up(args.n, args.name, host_ip=not args.no_host_ip, owner_pid=None)
        layout = {
            "name": net.name,
            "bridge": net.bridge,
            "subnet": str(net.subnet),
            "host": net.host_address,
            "namespaces": {i: [net.namespace(i), net.ip(i)] for i in range(1, net.n + 1)},
        }
        if args.json:
            print(json.dumps(layout))
        else:
            print(
                f"network {net.name}: bridge {net.bridge}, subnet {net.subnet},"
                f" host {net.host_address or '-'}"
            )
            for i in range(1, net.n + 1):
                print(f"  {i}: {net.namespace(i)} {net.ip(i)}")
            print(
                f"run in one: python {sys.argv[0]} exec 1 -- CMD;"
                f" remove: python {sys.argv[0]} down {net.name}"
            )
    elif args.command == "down":
        if args.name:
            teardown(args.name)
        else:
            with _locked():
                _cleanup_stale_locked()
                for rec in _records():
                    if rec.owner_pid is None:
                        teardown(rec.name)
    elif args.command == "list":
        for rec in _records():
            owner = "script" if rec.owner_pid is None else f"pid {rec.owner_pid}"
            state = "" if rec.owner_alive() else " (owner gone: stale)"
            print(f"{rec.name}: {rec.n} namespaces, {rec.subnet}, {owner}{state}")
    elif args.command == "exec":
        net = _pick(args.name)
        cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
        if not cmd:
            raise ValueError("exec needs a command: exec I -- CMD ...")
        os.execvp("ip", ["ip", "netns", "exec", net.namespace(args.i), *cmd])
    elif args.command == "cut":
        _pick(args.name).cut(args.i, how=args.how)
    elif args.command == "restore":
        _pick(args.name).restore(args.i)
    return 0


if __name__ == "__main__":
    sys.exit(main())
