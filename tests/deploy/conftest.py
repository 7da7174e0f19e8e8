"""The images, built with `make image` (CPU) or `make image-gpu` from a fresh clone of the committed tree, and one
container of the CPU image.

Needs a Docker daemon (`.ci/run` installs and starts one) and the disk for a build; without either these tests
skip with one message, and under CI=true they fail with it instead.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "chameleon-serve:cpu"
API_KEY = "deploy-test-key"
NO_DOCKER = "no Docker daemon reachable: install docker.io and start dockerd (as .ci/run does) to run these"
HEALTHY_TIMEOUT_S = 900  # the image's start period is 600 s; a busy CI machine loads the tiny model slowly
# `make image` peaked at 10.2 GB of disk (measured: wheelhouse 0.9, build context and stage 4.5, image 2.6, base
# 0.2); the 2.6 GB image stays until this session's teardown removes it.
IMAGE_BUILD_BYTES = 12 * 10**9
LABEL = "label=org.opencontainers.image.title=chameleon-serve"


def docker(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check, timeout=timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Container:
    name: str
    url: str
    seconds_to_healthy: float

    def state(self, field: str) -> str:
        return docker("inspect", "-f", "{{" + field + "}}", self.name).stdout.strip()

    def logs(self) -> str:
        out = docker("logs", self.name)
        return out.stdout + out.stderr


def skip_or_fail(reason: str) -> None:
    """A skip, except under CI=true: there a deploy test that cannot run fails, or CI would stay green with the
    images never built."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def docker_daemon() -> None:
    if shutil.which("docker") is None or \
            subprocess.run(["docker", "info"], capture_output=True, check=False).returncode:
        skip_or_fail(NO_DOCKER)


def remove_image(tag: str) -> None:
    """The tagged image, the layers only it used, and the dangling labelled ones a build leaves."""
    docker("rmi", "-f", tag, check=False)
    docker("image", "prune", "-f", "--filter", LABEL, check=False)


def build_image(target: str, tag: str, need_bytes: int, tmp_path: Path) -> Iterator[str]:
    """`make <target>` in a fresh clone: what a user with this repository and a Docker daemon would run.

    The image and every layer its build left are removed at the end: a CI machine's disk is shared, and each
    build left behind would cost the next run gigabytes. With too little disk for a build, the tests skip (fail
    under CI=true) and say how much there is."""
    remove_image(tag)  # an earlier or interrupted build's
    clone = tmp_path / "chameleon-serve"
    docker_root = Path(json.loads(docker("info", "--format", "{{json .DockerRootDir}}").stdout))
    free = {d: shutil.disk_usage(d).free for d in (tmp_path, docker_root)}
    if min(free.values()) < need_bytes:
        skip_or_fail(f"`make {target}` needs about {need_bytes / 1e9:.0f} GB of free disk; there is "
                     + ", ".join(f"{b / 1e9:.1f} GB in {d}" for d, b in free.items()))
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    log = tmp_path / f"make-{target}.log"
    try:
        with log.open("w") as out:
            done = subprocess.run(["make", "-C", str(clone), target, f"VENV={sys.prefix}"], stdout=out,
                                  stderr=subprocess.STDOUT, check=False)
        shutil.rmtree(clone)  # its wheelhouse
        assert done.returncode == 0, log.read_text()[-5000:]
        yield tag
    finally:
        remove_image(tag)


@pytest.fixture(scope="session")
def image(docker_daemon, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from build_image("image", IMAGE, IMAGE_BUILD_BYTES, tmp_path_factory.mktemp("clone"))


@pytest.fixture(scope="module")
def container(image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Container]:
    """`docker run` as the README says, on 127.0.0.1, with an API key from the environment. The drain grace
    is raised from 30 s so that the long reply of the `docker stop` test finishes on a busy machine."""
    name, port = f"chameleon-serve-test-{free_port()}", free_port()
    docker("run", "-d", "--name", name, "--shm-size", "1g", "-p", f"127.0.0.1:{port}:8000",
           "-e", f"CHAMELEON_API_KEY={API_KEY}", image, "--shutdown-grace-seconds", "150")
    live = Container(name, f"http://127.0.0.1:{port}", 0.0)
    try:
        start = time.monotonic()
        while (health := live.state(".State.Health.Status")) != "healthy":
            assert live.state(".State.Running") == "true", f"container exited:\n{live.logs()[-5000:]}"
            assert time.monotonic() - start < HEALTHY_TIMEOUT_S, f"still {health}:\n{live.logs()[-5000:]}"
            time.sleep(1)
        live.seconds_to_healthy = time.monotonic() - start
        yield live
    finally:
        docker("rm", "-f", "-v", name, check=False)  # -v: its /models volume too
