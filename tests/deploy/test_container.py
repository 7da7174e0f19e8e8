"""The CPU image as users run it: healthy, non-root, answering the official client, scraped by Prometheus,
and drained by `docker stop`. The stop test is last in this module: it ends the container."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
import threading
import time
import uuid
from pathlib import Path

import httpx
import openai
import pytest
import yaml
from conftest import API_KEY, ROOT, Container, docker, free_port
from PIL import Image

MODEL = "tiny-chameleon"  # the embedded default's served name
SCRAPE_WITHIN_S = 60


def _client(container: Container) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{container.url}/v1", api_key=API_KEY, max_retries=0, timeout=300)


def _png_data_url(color: str) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (48, 32), color).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def test_healthy_and_serving(container: Container):
    assert container.state(".State.Health.Status") == "healthy"
    assert httpx.get(f"{container.url}/health").status_code == 200
    assert httpx.get(f"{container.url}/v1/models").status_code == 401  # the key came from the environment
    print(f"\ntime to healthy: {container.seconds_to_healthy:.0f} s")


def test_runs_as_non_root(container: Container):
    assert container.state(".Config.User") == "10001"
    assert docker("exec", container.name, "stat", "-c", "%u", "/proc/1").stdout.strip() == "10001"


def test_image_has_no_build_tools_or_caches(image: str):
    probe = ("import os, shutil; print(sorted(p for p in "
             "('/wheelhouse', '/root/.cache', os.path.expanduser('~/.cache'))"
             " if os.path.exists(p)), [t for t in ('pip', 'gcc', 'cc', 'make') if shutil.which(t)])")
    out = docker("run", "--rm", "--entrypoint", "python3", image, "-c", probe).stdout.strip()
    assert out == "[] []"
    size = int(docker("image", "inspect", "-f", "{{.Size}}", image).stdout)
    print(f"\nimage size: {size / 2**30:.2f} GiB")


def test_chat_with_an_image_in_and_an_image_out(container: Container):
    client = _client(container)
    reply = client.chat.completions.create(model=MODEL, max_tokens=8, messages=[{"role": "user", "content": [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image_url", "image_url": {"url": _png_data_url("red")}},
    ]}])
    assert isinstance(reply.choices[0].message.content, str) and reply.usage.prompt_tokens > 8
    drawn = client.chat.completions.create(model=MODEL, modalities=["image"], seed=3,
                                           messages=[{"role": "user", "content": "A red circle on white."}])
    [part] = drawn.choices[0].message.content
    png = base64.b64decode(part["image_url"]["url"].removeprefix("data:image/png;base64,"))
    width, height = Image.open(io.BytesIO(png)).size
    assert width == height > 0


def _scrape_config(target: str, dst: Path) -> Path:
    """The shipped config with its target replaced by the live server."""
    config = yaml.safe_load((ROOT / "docker" / "prometheus.yml").read_text())
    config["scrape_configs"][0]["static_configs"] = [{"targets": [target]}]
    dst.write_text(yaml.safe_dump(config))
    return dst


def _query(prom: str, expr: str) -> list:
    return httpx.get(f"{prom}/api/v1/query", params={"query": expr}).json()["data"]["result"]


def test_prometheus_scrapes_vllm_and_image_metrics(container: Container, tmp_path: Path):
    if shutil.which("prometheus") is None:
        pytest.skip("no prometheus binary: install Debian's prometheus (as .ci/run does) to run this")
    config = _scrape_config(container.url.removeprefix("http://"), tmp_path / "prometheus.yml")
    port = free_port()
    prom = subprocess.Popen(["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        while not _ready(url):
            assert prom.poll() is None, "prometheus exited"
            time.sleep(0.5)
        deadline = time.monotonic() + SCRAPE_WITHIN_S
        wanted = ["vllm:num_requests_running", "chameleon:images_generated_total"]
        while not all(_query(url, name) for name in wanted):
            assert time.monotonic() < deadline, f"not scraped within {SCRAPE_WITHIN_S} s: {wanted}"
            time.sleep(1)
        [running] = _query(url, "vllm:num_requests_running")
        assert running["metric"]["model_name"] == MODEL
    finally:
        prom.terminate()
        prom.wait(30)


def _ready(prom: str) -> bool:
    try:
        return httpx.get(f"{prom}/-/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_dashboard_charts_only_metrics_the_server_exports(container: Container):
    dashboard = json.loads((ROOT / "docker" / "grafana" / "dashboards" / "chameleon-serve.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    charted = {m for e in exprs for m in re.findall(r"\b(?:vllm|chameleon):\w+", e)}
    exported = set(re.findall(r"^([\w:]+)(?:\{| )", httpx.get(f"{container.url}/metrics").text, re.MULTILINE))
    assert {"vllm:num_requests_running", "chameleon:image_decode_seconds_bucket"} <= charted
    assert charted <= exported, charted - exported


def test_docker_stop_lets_a_streamed_reply_finish_and_exits_0(container: Container):
    """Last: SIGTERM (docker stop) arrives while the stream runs; the reply completes, the container exits 0."""
    request_id = uuid.uuid4().hex
    stream = _client(container).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "go"}], max_tokens=1500, stream=True,
        extra_headers={"X-Request-Id": request_id}, extra_body={"ignore_eos": True, "min_tokens": 1500})
    chunks = iter(stream)
    next(chunks)
    stop = threading.Thread(target=docker, args=("stop", "-t", "200", container.name), kwargs={"timeout": 260})
    stop.start()
    rest = list(chunks)
    stop.join()
    assert rest[-1].choices[0].finish_reason == "length"  # the whole answer arrived
    logs = container.logs()
    finished = next(i for i, line in enumerate(logs.splitlines()) if request_id in line)
    shutdown = next(i for i, line in enumerate(logs.splitlines()) if "Shutting down" in line)
    assert shutdown < finished, "SIGTERM arrived after the reply had finished: nothing was drained"
    assert container.state(".State.ExitCode") == "0"
