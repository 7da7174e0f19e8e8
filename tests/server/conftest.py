"""One real server per checkpoint per session: the tiny checkpoint, the real vLLM CPU engine, HTTP."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from engine.offline.tiny import TinySpec, make_tiny

API_KEY = "test-key"
MODEL = "tiny-chameleon"
START_TIMEOUT_S = 600


@dataclass
class LiveServer:
    url: str
    model_dir: Path
    log_path: Path
    process: subprocess.Popen
    startup_statuses: list[int]  # /ready answers seen before the first 200: 503s while the model loads

    def client(self, **kw) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=API_KEY, max_retries=0, timeout=300, **kw)

    def async_client(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=f"{self.url}/v1", api_key=API_KEY, max_retries=0, timeout=300)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def metric(self, name: str) -> float:
        """A Prometheus metric's value on /metrics, summed over its label sets (0 where it has none)."""
        text = httpx.get(f"{self.url}/metrics", timeout=30).text
        return sum(float(m) for m in re.findall(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.MULTILINE))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model_dir: Path, log_path: Path, *extra: str) -> LiveServer:
    port = _free_port()
    cmd = [sys.executable, "-m", "server.cli", "--model", str(model_dir), "--host", "127.0.0.1", "--port", str(port),
           "--served-model-name", MODEL, "--api-key", API_KEY, "--dtype", "float32", "--enforce-eager",
           "--max-model-len", "4096", *extra]
    log = log_path.open("w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"})
    server = LiveServer(f"http://127.0.0.1:{port}", model_dir, log_path, proc, [])
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{server.log()[-5000:]}")
        try:
            status = httpx.get(f"{server.url}/ready", timeout=2).status_code
            if status == 200:
                return server
            server.startup_statuses.append(status)
        except httpx.HTTPError:
            pass
        time.sleep(1)
    proc.kill()
    raise RuntimeError(f"server did not become healthy:\n{server.log()[-5000:]}")


def stop_server(server: LiveServer) -> None:
    server.process.terminate()
    try:
        server.process.wait(60)
    except subprocess.TimeoutExpired:
        server.process.kill()


def serve_made_tiny(tmp_path_factory: pytest.TempPathFactory, family: str, grid: int, codebook_size: int,
                    resave: Callable[[Path, Path], Path] | None = None) -> Iterator[LiveServer]:
    """A tiny ``family`` checkpoint written as users write one (``chameleon-serve make-tiny``), or as ``resave``
    writes that folder into another, served until the generator is closed (a module fixture's ``yield from``)."""
    model_dir = tmp_path_factory.mktemp(family) / f"tiny-{family}"
    subprocess.run([sys.executable, "-m", "server.cli", "make-tiny", str(model_dir), "--family", family,
                    "--grid", str(grid), "--codebook-size", str(codebook_size)], check=True, capture_output=True,
                   timeout=600)
    if resave is not None:
        model_dir = resave(model_dir, model_dir.with_name(f"{model_dir.name}-resaved"))
    live = start_server(model_dir, tmp_path_factory.mktemp(f"{family}-logs") / "server.log")
    yield live
    stop_server(live)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default tiny checkpoint (32x32 = 1024 codes per image)."""
    return make_tiny(tmp_path_factory.mktemp("tiny"), TinySpec())


@pytest.fixture(scope="session")
def server(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = start_server(tiny_dir, tmp_path_factory.mktemp("logs") / "server.log")
    yield live
    stop_server(live)


@pytest.fixture(scope="session")
def client(server: LiveServer) -> openai.OpenAI:
    return server.client()
