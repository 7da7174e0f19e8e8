"""Deployment files: valid for their tools (Kubernetes schemas, promtool, docker-compose), and in step with
the CLI parser and the app's routes (no drift in probe paths, ports, command or arguments)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import ROOT

from server.app import create_app
from server.cli import build_parser
from server.settings import Settings

DOCKER = ROOT / "docker"
K8S = sorted((DOCKER / "k8s").glob("*.yaml"))
CUSTOM_KINDS = {"ServiceMonitor"}  # the Prometheus Operator's; Kubernetes' schemas do not hold it


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"no {name}: .ci/run installs it")
    return path


@pytest.fixture(scope="module")
def parser():
    return build_parser()


@pytest.fixture(scope="module")
def routes() -> set[str]:
    app = create_app(Settings(model="m", served_model_name="m", engine_args=None))
    return {route.path for route in app.routes}


def _documents() -> list[dict]:
    return [doc for path in K8S for doc in yaml.safe_load_all(path.read_text()) if doc]


def _kind(kind: str) -> dict:
    [doc] = [d for d in _documents() if d["kind"] == kind]
    return doc


@pytest.mark.parametrize("path", K8S, ids=lambda p: p.name)
def test_kubernetes_schemas(path: Path):
    import kubernetes_validate

    for doc in yaml.safe_load_all(path.read_text()):
        if doc["kind"] not in CUSTOM_KINDS:
            kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def test_promtool_accepts_the_scrape_config():
    subprocess.run([_tool("promtool"), "check", "config", str(DOCKER / "prometheus.yml")], check=True)


def test_docker_compose_accepts_the_compose_file():
    subprocess.run([_tool("docker-compose"), "-f", str(DOCKER / "compose.yaml"), "config", "-q"], check=True)


def test_deployment_matches_the_cli_and_routes(parser, routes):
    spec = _kind("Deployment")["spec"]["template"]["spec"]
    [container] = spec["containers"]
    assert "command" not in container  # the image's ENTRYPOINT, chameleon-serve, runs the args
    args = parser.parse_args(container["args"])
    [port] = container["ports"]
    assert port["containerPort"] == args.port
    probes = {k: container[k]["httpGet"] for k in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert {k: p["path"] for k, p in probes.items()} == {
        "startupProbe": "/health", "livenessProbe": "/health", "readinessProbe": "/ready"}
    assert {p["path"] for p in probes.values()} <= routes
    assert {p["port"] for p in probes.values()} == {port["name"]}
    assert container["resources"]["limits"]["nvidia.com/gpu"] >= 1
    assert f"-t {container['image']} $(WHEELHOUSE)/gpu" in (ROOT / "Makefile").read_text()  # `make image-gpu`'s tag
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert spec["terminationGracePeriodSeconds"] > pre_stop + args.shutdown_grace_seconds
    annotations = _kind("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(args.port) and annotations["prometheus.io/path"] in routes
    assert spec["securityContext"]["runAsUser"] == _dockerfile_user()


def test_service_and_monitor_select_the_pods(routes):
    pod_labels = _kind("Deployment")["spec"]["template"]["metadata"]["labels"]
    service, monitor = _kind("Service"), _kind("ServiceMonitor")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]} and endpoint["path"] in routes


def _dockerfile() -> str:
    return (DOCKER / "Dockerfile").read_text()


def _dockerfile_user() -> int:
    return int(re.search(r"^USER (\d+)$", _dockerfile(), re.MULTILINE).group(1))


def test_dockerfile_matches_the_cli_and_routes(parser, routes):
    text, defaults = _dockerfile(), parser.parse_args([])
    assert re.search(r"^EXPOSE (\d+)$", text, re.MULTILINE).group(1) == str(defaults.port)
    health = re.search(r"http://127\.0\.0\.1:(\d+)(/\w+)", text)
    assert (int(health.group(1)), health.group(2)) == (defaults.port, "/health") and "/health" in routes
    assert re.search(r"^ENTRYPOINT (.+)$", text, re.MULTILINE).group(1) == '["chameleon-serve"]'
    assert 'chameleon-serve = "server.cli:main"' in (ROOT / "pyproject.toml").read_text()  # the entry point
    assert _dockerfile_user() != 0


def test_compose_matches_the_cli(parser, routes):
    services = yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"]
    servers = {name: s for name, s in services.items() if str(s.get("image", "")).startswith("chameleon-serve:")}
    assert set(servers) == {"chameleon-gpu", "chameleon-cpu"}
    for server in servers.values():
        args = parser.parse_args([re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", a) for a in server.get("command", [])])
        assert server["ports"] == [f"127.0.0.1:{args.port}:{args.port}"]
        assert int(server["stop_grace_period"].removesuffix("s")) > args.shutdown_grace_seconds
    gpu = servers["chameleon-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert gpu[0]["capabilities"] == ["gpu"]
    scrape = yaml.safe_load((DOCKER / "prometheus.yml").read_text())["scrape_configs"][0]
    assert scrape["metrics_path"] in routes
    [target] = scrape["static_configs"][0]["targets"]
    host, port = target.split(":")
    assert int(port) == parser.parse_args([]).port
    assert host in servers["chameleon-cpu"]["networks"]["default"]["aliases"]
