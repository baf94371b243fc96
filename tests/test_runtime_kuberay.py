"""runtime/kuberay/*.yaml and runtime/jupyter.Dockerfile: a Jupyter pod whose notebooks and
Clusters panel use a KubeRay ``RayCluster``. The manifests are read and checked against
each other and against what rayjupyter reads (RAY_ADDRESS, RAYJUPYTER_ENGINE, Ray's token);
the image is built where a Docker daemon answers, and skipped with the reason otherwise.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import yaml

from rayjupyter.server.ray_clusters import parse_ray_address

REPO = Path(__file__).resolve().parents[1]
KUBERAY = REPO / "runtime" / "kuberay"
DOCKERFILE = REPO / "runtime" / "jupyter.Dockerfile"


def _docs(name: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((KUBERAY / name).read_text()) if doc]


def _one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [doc for doc in docs if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


@pytest.fixture(scope="module")
def raycluster() -> dict[str, Any]:
    return _one(_docs("raycluster.yaml"), "RayCluster")


@pytest.fixture(scope="module")
def jupyter() -> list[dict[str, Any]]:
    return _docs("jupyter.yaml")


def _container(pod_template: dict[str, Any]) -> dict[str, Any]:
    containers = pod_template["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in container.get("env", [])}


def _ports(container: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: int(p["containerPort"]) for p in container.get("ports", [])}


def _dockerfile_arg(name: str) -> str:
    match = re.search(rf"^ARG {name}=(\S+)$", DOCKERFILE.read_text(), re.M)
    assert match, f"no ARG {name}= in {DOCKERFILE}"
    return match.group(1)


def test_raycluster_is_a_kuberay_resource_with_token_auth(raycluster: dict[str, Any]) -> None:
    assert raycluster["apiVersion"] == "ray.io/v1"
    spec = raycluster["spec"]
    assert spec["authOptions"]["mode"] == "token"
    head = _container(spec["headGroupSpec"]["template"])
    assert spec["headGroupSpec"]["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    assert _ports(head) == {"gcs-server": 6379, "dashboard": 8265, "client": 10001}
    for group in spec["workerGroupSpecs"]:
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        worker = _container(group["template"])
        cpus = group["rayStartParams"]["num-cpus"]
        # Ray counts the machine's CPUs otherwise: the pod's limit and Ray's view agree
        assert (
            worker["resources"]["limits"]["cpu"] == cpus == worker["resources"]["requests"]["cpu"]
        )


def test_ray_versions_and_pythons_agree_for_ray_client(raycluster: dict[str, Any]) -> None:
    """Ray Client refuses a driver whose Ray or Python version differs from the cluster's."""
    version = raycluster["spec"]["rayVersion"]
    assert _dockerfile_arg("RAY_VERSION") == version
    base = re.search(r"^FROM python:(\d+)\.(\d+)-slim$", DOCKERFILE.read_text(), re.M)
    assert base, "the Jupyter image's base is python:X.Y-slim"
    expected = f"rayproject/ray:{version}-py{base.group(1)}{base.group(2)}"
    spec = raycluster["spec"]
    images = [_container(spec["headGroupSpec"]["template"])["image"]]
    images += [_container(g["template"])["image"] for g in spec["workerGroupSpecs"]]
    assert set(images) == {expected}
    with contextlib.suppress(metadata.PackageNotFoundError):  # the Ray tests use, if any
        assert metadata.version("ray") == version


def test_jupyter_pod_points_ray_connect_at_the_head_service(
    raycluster: dict[str, Any], jupyter: list[dict[str, Any]]
) -> None:
    deployment = _one(jupyter, "Deployment")
    container = _container(deployment["spec"]["template"])
    env = _env(container)
    assert env["RAYJUPYTER_ENGINE"]["value"] == "ray"  # read by %ray_connect
    # KubeRay names the head's Service <RayCluster name>-head-svc
    service = f"{raycluster['metadata']['name']}-head-svc"
    head_ports = _ports(_container(raycluster["spec"]["headGroupSpec"]["template"]))
    assert env["RAY_ADDRESS"]["value"] == f"ray://{service}:{head_ports['client']}"
    # the Clusters panel, given that address, reads the dashboard on the same Service
    ray = parse_ray_address(env["RAY_ADDRESS"]["value"])
    assert ray.dashboard == f"http://{service}:{head_ports['dashboard']}"


def test_tokens_come_from_secrets_never_literals(
    raycluster: dict[str, Any], jupyter: list[dict[str, Any]]
) -> None:
    deployment = _one(jupyter, "Deployment")
    container = _container(deployment["spec"]["template"])
    env = _env(container)
    ray_token = env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
    # the RayCluster and the Jupyter pod share one Secret (KubeRay's key: auth_token)
    assert ray_token == {
        "name": raycluster["spec"]["authOptions"]["secretName"],
        "key": "auth_token",
    }
    assert env["RAY_AUTH_MODE"]["value"] == "token"
    assert "secretKeyRef" in env["JUPYTER_TOKEN"]["valueFrom"]
    for name, item in env.items():
        if "TOKEN" in name or "SECRET" in name:
            assert "value" not in item, f"{name} is a literal in jupyter.yaml"
    args = container["args"]
    assert args[:2] == ["jupyter", "lab"]
    assert "--IdentityProvider.token=$(JUPYTER_TOKEN)" in args  # Kubernetes expands $(VAR)


def test_jupyter_service_selects_the_pod_and_ports_agree(jupyter: list[dict[str, Any]]) -> None:
    service, deployment = _one(jupyter, "Service"), _one(jupyter, "Deployment")
    template = deployment["spec"]["template"]
    labels = template["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"] == labels
    assert service["spec"]["selector"].items() <= labels.items()
    container = _container(template)
    ports = _ports(container)
    assert "--port=8888" in container["args"] and ports == {"http": 8888}
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]
    assert container["readinessProbe"]["httpGet"]["port"] == "http"
    assert template["spec"]["securityContext"]["runAsNonRoot"] is True
    assert container["image"].startswith("rayjupyter-jupyter:")
    assert "EXPOSE 8888" in DOCKERFILE.read_text()


def _docker_unavailable() -> str | None:
    """Why the image cannot be built here, or None when a Docker daemon answers."""
    if shutil.which("docker") is None:
        return "no docker CLI"
    try:
        info = subprocess.run(["docker", "info"], capture_output=True, timeout=20, check=False)
    except subprocess.TimeoutExpired:
        return "docker info did not answer within 20 s"
    if info.returncode != 0:
        lines = info.stderr.decode(errors="replace").strip().splitlines()
        return f"no Docker daemon ({lines[-1] if lines else 'docker info failed'})"
    if not (REPO / "rayjupyter" / "labextension" / "static" / "style.js").exists():
        return "the lab extension is not built (cd labextension && jlpm install && jlpm build:prod)"
    return None


@pytest.mark.timeout(1800)
def test_the_jupyter_image_builds_and_has_rayjupyter_and_ray() -> None:
    reason = _docker_unavailable()
    if reason:
        pytest.skip(f"cannot build runtime/jupyter.Dockerfile here: {reason}")
    tag = "rayjupyter-jupyter:test"
    build = ["docker", "build", "-f", str(DOCKERFILE), "-t", tag, str(REPO)]
    subprocess.run(build, check=True, timeout=1700)
    probe = (
        "import importlib.metadata as m, rayjupyter.server.ray_clusters, ray; "
        "print(m.version('ray'), m.version('jupyterlab'))"
    )
    out = subprocess.run(
        ["docker", "run", "--rm", tag, "python", "-c", probe],
        check=True,
        capture_output=True,
        timeout=120,
    )
    assert out.stdout.split()[0].decode() == _dockerfile_arg("RAY_VERSION")
    labext = subprocess.run(
        ["docker", "run", "--rm", tag, "jupyter", "labextension", "list"],
        capture_output=True,
        timeout=120,
        check=True,
    )
    assert b"rayjupyter" in labext.stdout + labext.stderr
