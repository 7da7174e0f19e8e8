"""Start a server on a checkpoint for a benchmark run (ours, or vLLM's own OpenAI server), timed to ready.

Both get the same engine flags (fp32, the same context length, otherwise vLLM's defaults, compiled
graphs included, as deployments run), so a side-by-side figure measures the front end, not a
configuration difference.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

SERVED_NAME = "tiny"
ENGINE_FLAGS = ("--dtype", "float32", "--max-model-len", "4096")
_MODULES = {
    "chameleon-serve": ("server.cli",),
    # Our span logits processor is the engine work our server adds to every request; vLLM's server gets it
    # too (the plugin model itself comes from the entry point). Its executor stays vLLM's default, as users
    # run it: on the CPU build a worker process, where ours runs the model in the EngineCore
    # (server.cli.model_in_engine_core), so on CPU the text ratio includes that choice.
    "vllm": ("vllm.entrypoints.openai.api_server", "--logits-processors",
             "engine.worker.runner_v1:ChameleonSpanLogitsProcessorV1"),
}


@dataclass(frozen=True, slots=True)
class Running:
    url: str
    start_s: float  # process start to a 200 from /health
    pid: int


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(proc: subprocess.Popen, url: str, log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}; see {log}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"server not healthy after {timeout_s:.0f} s; see {log}")


@contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """SIGTERM raises SystemExit while the block runs, so the ``finally`` that stops the server runs too
    (Python's default SIGTERM ends the process at once and leaves the server behind)."""
    previous = signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def serve(kind: str, model_dir: str | Path, log: Path, *extra: str, timeout_s: float = 900) -> Iterator[Running]:
    """Run ``kind`` ("chameleon-serve" or "vllm") on ``model_dir`` until the block ends (SIGTERM, then kill)."""
    module, *flags = _MODULES[kind]
    port = _free_port()
    cmd = [sys.executable, "-m", module, "--model", str(model_dir), "--host", "127.0.0.1", "--port", str(port),
           "--served-model-name", SERVED_NAME, *ENGINE_FLAGS, *flags, *extra]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    log.parent.mkdir(parents=True, exist_ok=True)
    url = f"http://127.0.0.1:{port}"
    start = time.perf_counter()
    with _sigterm_unwinds(), log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            _wait_healthy(proc, url, log, timeout_s)
            yield Running(url, time.perf_counter() - start, proc.pid)
        finally:
            proc.terminate()
            try:
                proc.wait(90)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
