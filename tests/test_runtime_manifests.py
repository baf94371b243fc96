"""runtime/Dockerfile and runtime/k8s/*.yaml agree with each other and with the CLI.

They cannot be built or deployed here, so this reads them and checks the fields that matter:
kinds, selectors, CLI flags, ports, probes, resources, and that the secret never is a literal.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

RUNTIME = Path(__file__).resolve().parents[1] / "runtime"
K8S = RUNTIME / "k8s"

# the CLI's flags (rayjupyter/cli.py), by subcommand and mode; True: the flag takes a value
_COMMON = {"--node-ip": True, "--num-cpus": True, "--num-gpus": True, "--resources": True}
_HEAD = {"--head": False, "--port": True, "--dashboard-port": True, "--block": False, **_COMMON}
_JOIN = {"--address": True, "--block": False, **_COMMON}
_STATUS = {"--address": True}
_SECRET_ENV = "RAYJUPYTER_SECRET"


def _cli(argv: list[str]) -> tuple[str, dict[str, str | None]]:
    """Parse a `rayjupyter ...` line as the CLI would: (mode, {flag: value}); fails on extras."""
    assert argv[0] == "rayjupyter", argv
    sub, rest = argv[1], argv[2:]
    if sub == "start":
        mode, allowed = ("head", _HEAD) if "--head" in rest else ("join", _JOIN)
    elif sub == "status":
        mode, allowed = "status", _STATUS
    else:
        raise AssertionError(f"unexpected subcommand {sub!r} in {argv}")
    flags: dict[str, str | None] = {}
    words = iter(rest)
    for word in words:
        assert word in allowed, f"{word!r} is not a flag of `rayjupyter {sub}` ({mode}): {argv}"
        assert word not in flags, f"{word} given twice: {argv}"
        flags[word] = next(words) if allowed[word] else None
    if mode == "join":
        assert "--address" in flags, f"a joining node needs --address: {argv}"
    return mode, flags


def _docs(name: str) -> list[dict[str, Any]]:
    docs = [doc for doc in yaml.safe_load_all((K8S / name).read_text()) if doc]
    for doc in docs:
        assert {"apiVersion", "kind", "metadata"} <= doc.keys(), f"{name}: {doc}"
    return docs


def _one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [doc for doc in docs if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def _expand(word: str, container: dict[str, Any]) -> str:
    """Check every $(VAR) in an arg is defined in the container's env (Kubernetes expands it)."""
    names = {env["name"] for env in container.get("env", [])}
    for var in re.findall(r"\$\((\w+)\)", word):
        assert var in names, f"{word} refers to ${var}, which the container does not define"
    return word


@pytest.fixture(scope="module")
def head() -> dict[str, Any]:
    docs = _docs("head.yaml")
    assert sorted(doc["kind"] for doc in docs) == ["Deployment", "Service"]
    return {"service": _one(docs, "Service"), "deployment": _one(docs, "Deployment")}


@pytest.fixture(scope="module")
def worker() -> dict[str, Any]:
    docs = _docs("worker.yaml")
    assert [doc["kind"] for doc in docs] == ["Deployment"]
    return docs[0]


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs of runtime/Dockerfile, continuations joined."""
    text = re.sub(r"\\\n", " ", (RUNTIME / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines()]
    pairs = []
    for line in lines:
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            pairs.append((word.upper(), rest.strip()))
    return pairs


def test_deployments_select_their_own_pods(head: dict[str, Any], worker: dict[str, Any]) -> None:
    for deployment in (head["deployment"], worker):
        assert deployment["apiVersion"] == "apps/v1"
        spec = deployment["spec"]
        labels = spec["template"]["metadata"]["labels"]
        assert spec["selector"]["matchLabels"].items() <= labels.items()
    assert head["deployment"]["spec"]["replicas"] == 1
    assert worker["spec"]["replicas"] >= 1
    head_labels = head["deployment"]["spec"]["template"]["metadata"]["labels"]
    worker_labels = worker["spec"]["template"]["metadata"]["labels"]
    service_selector = head["service"]["spec"]["selector"].items()
    assert head["service"]["apiVersion"] == "v1"
    assert service_selector <= head_labels.items()
    assert not service_selector <= worker_labels.items(), "the Service must not pick workers"
    worker_selector = worker["spec"]["selector"]["matchLabels"].items()
    assert not worker_selector <= head_labels.items(), "the worker Deployment must not own the head"


def test_container_lines_use_only_the_cli_flags(
    head: dict[str, Any], worker: dict[str, Any]
) -> None:
    head_c, worker_c = _container(head["deployment"]), _container(worker)
    for container in (head_c, worker_c):
        # args, not command: the image's ENTRYPOINT (tini, PID 1) stays in front
        assert "command" not in container and container["args"][0] == "rayjupyter"
        for word in container["args"]:
            _expand(word, container)
    mode, flags = _cli(head_c["args"])
    assert mode == "head" and "--block" in flags
    mode, joined = _cli(worker_c["args"])
    assert mode == "join" and "--block" in joined
    host, _, port = (joined["--address"] or "").partition(":")
    service = head["service"]
    assert host == service["metadata"]["name"]
    assert int(port) == _service_port(service, "cluster") == int(flags["--port"] or 0)
    assert int(flags["--dashboard-port"] or 0) == _service_port(service, "dashboard")
    assert head_c["image"] == worker_c["image"]


def _service_port(service: dict[str, Any], name: str) -> int:
    ports = {port["name"]: port for port in service["spec"]["ports"]}
    return int(ports[name]["port"])


def test_ports_agree_between_service_containers_and_probes(head: dict[str, Any]) -> None:
    container = _container(head["deployment"])
    by_name = {port["name"]: int(port["containerPort"]) for port in container["ports"]}
    _, flags = _cli(container["args"])
    assert by_name == {
        "cluster": int(flags["--port"] or 0),
        "dashboard": int(flags["--dashboard-port"] or 0),
    }
    for port in head["service"]["spec"]["ports"]:
        target = port["targetPort"]
        target_number = by_name[target] if isinstance(target, str) else int(target)
        assert target_number == int(port["port"]) == by_name[port["name"]]

    probe = container["readinessProbe"]
    if "exec" in probe:
        command = probe["exec"]["command"]
        if command[:2] == ["sh", "-c"]:
            command = shlex.split(command[2])
        mode, status = _cli(command)
        assert mode == "status"
        address = status.get("--address")
        if address is not None:
            assert address.rsplit(":", 1)[1] == str(by_name["cluster"])
    else:
        assert probe["tcpSocket"]["port"] in ("cluster", by_name["cluster"])
    liveness = container.get("livenessProbe", {}).get("tcpSocket")
    if liveness is not None:
        assert liveness["port"] in ("cluster", by_name["cluster"])


def test_resources_and_shared_memory(head: dict[str, Any], worker: dict[str, Any]) -> None:
    for deployment in (head["deployment"], worker):
        container = _container(deployment)
        requests = container["resources"]["requests"]
        assert {"cpu", "memory"} <= requests.keys()
        _, flags = _cli(container["args"])
        # psutil sees the machine's CPUs, not the pod's: --num-cpus must say what the pod has
        assert float(flags["--num-cpus"] or 0) == float(requests["cpu"])
        limits = container["resources"].get("limits", {})
        if "cpu" in limits:
            assert float(limits["cpu"]) >= float(requests["cpu"])
        # the object store is in /dev/shm, which is 64 MiB in a pod unless a memory volume
        volumes = {vol["name"]: vol for vol in deployment["spec"]["template"]["spec"]["volumes"]}
        shm = [m for m in container["volumeMounts"] if m["mountPath"] == "/dev/shm"]
        assert len(shm) == 1 and volumes[shm[0]["name"]]["emptyDir"]["medium"] == "Memory"
        pod_security = deployment["spec"]["template"]["spec"]["securityContext"]
        assert pod_security["runAsNonRoot"] is True


def test_the_secret_comes_from_a_kubernetes_secret(
    head: dict[str, Any], worker: dict[str, Any]
) -> None:
    refs = []
    for deployment in (head["deployment"], worker):
        container = _container(deployment)
        env = {item["name"]: item for item in container["env"]}
        secret = env[_SECRET_ENV]
        assert "value" not in secret, "the cluster secret must never be a literal in a manifest"
        refs.append(secret["valueFrom"]["secretKeyRef"])
        text = json.dumps(container)
        assert "rayjupyter://" not in text, "no secret-bearing address in a manifest"
    assert refs[0] == refs[1]
    for path in K8S.glob("*.yaml"):
        for doc in _docs(path.name):
            assert doc["kind"] != "Secret" or not (doc.get("data") or doc.get("stringData")), (
                f"{path.name} holds a secret's value: create it with kubectl instead"
            )
    readme = (RUNTIME / "README.md").read_text()
    name, key = refs[0]["name"], refs[0]["key"]
    assert f"kubectl create secret generic {name} --from-literal={key}=" in readme


def test_dockerfile_cmd_and_expose_agree_with_the_manifests(head: dict[str, Any]) -> None:
    pairs = _dockerfile()
    instructions = dict(pairs)  # the last of each kind, as Docker uses it
    assert pairs[0] == ("FROM", "python:3.11-slim")
    exposed = {int(port) for port in instructions["EXPOSE"].split()}
    mode, flags = _cli(json.loads(instructions["CMD"]))
    assert mode == "head" and "--block" in flags
    assert flags["--node-ip"] == "0.0.0.0", "in a container the head must listen beyond loopback"
    assert exposed == {int(flags["--port"] or 0), int(flags["--dashboard-port"] or 0)}
    service_ports = {int(port["port"]) for port in head["service"]["spec"]["ports"]}
    assert exposed == service_ports
    assert json.loads(instructions["ENTRYPOINT"])[0] == "tini"  # the manifests keep it via args
    assert instructions["USER"] not in ("root", "0"), "run as a non-root user"
    runs = " ".join(args for word, args in pairs if word == "RUN")
    assert "pip install" in runs and any(word == "COPY" for word, _ in pairs)
    uid = re.search(r"useradd\b.*--uid (\d+)", runs)
    assert uid is not None and instructions["USER"] == uid.group(1)
    pod_user = head["deployment"]["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
    assert str(pod_user) == instructions["USER"]
