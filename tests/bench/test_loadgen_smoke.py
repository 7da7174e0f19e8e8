"""The load generator against a live server: tiny counts, every workload, and the report's figures present.

No timing assertions: speed is measured in bench/, not asserted here.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import interference, loadgen
from bench.workloads import image_out_chat, image_rows_chat, standard
from engine.offline.tiny import TinySpec, make_tiny
from engine.shared.vocab import TokenLayout

# tests/server/conftest.py's start_server/stop_server, under a name of its own ("conftest" is ambiguous here).
_spec = importlib.util.spec_from_file_location("server_fixtures", Path(__file__).parents[1] / "server" / "conftest.py")
server_fixtures = sys.modules.setdefault("server_fixtures", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(server_fixtures)

FIGURES = ("requests_per_s", "images_per_s", "output_tokens_per_s", "ttft_s", "itl_s", "e2e_s", "request_to_png_s")


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A server on a small-grid checkpoint (16 codes per image), so image-out requests are quick."""
    model_dir = make_tiny(tmp_path_factory.mktemp("tiny_bench"), TinySpec(grid=4))
    server = server_fixtures.start_server(model_dir, tmp_path_factory.mktemp("logs") / "server.log")
    yield server
    server_fixtures.stop_server(server)


@pytest.fixture(scope="module")
def image_tokens(live) -> int:
    """One image of ``live``'s checkpoint, BOI to EOI."""
    return TokenLayout.from_checkpoint(live.model_dir).span.image_tokens()


def test_loadgen_reports_every_figure(live, tmp_path: Path) -> None:
    out = tmp_path / "report"
    loadgen.main(["--url", live.url, "--api-key", server_fixtures.API_KEY, "--concurrency", "1", "2",
                  "--requests", "3", "--max-tokens", "8", "--out", str(out)])
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["model"] == server_fixtures.MODEL
    assert set(report["workloads"]) == {"text", "image-in", "image-out", "mix"}
    for name, levels in report["workloads"].items():
        assert set(levels) == {"1", "2"}
        for level in levels.values():
            assert level["ok"] == level["requests"] == 3, (name, level["errors"])
            assert set(FIGURES) <= set(level)
            assert level["requests_per_s"] > 0 and level["output_tokens_per_s"] > 0
            assert set(level["e2e_s"]) == {"p50", "p90", "p99"}
            assert level["ttft_s"]["p50"] <= level["e2e_s"]["p99"]
            if name in ("text", "image-in"):
                assert level["itl_s"] is not None and level["images_per_s"] == 0
            if name == "image-out":
                assert level["images_per_s"] > 0 and level["request_to_png_s"] is not None
                assert level["itl_s"] is None  # one image chunk per reply: no text gaps
    mixed = report["workloads"]["mix"]["2"]
    assert mixed["images_per_s"] > 0 and mixed["itl_s"] is not None  # request 2 of 3 draws
    assert out.with_suffix(".png").read_bytes().startswith(b"\x89PNG")


def test_failed_requests_are_counted_not_raised(live) -> None:
    """A wrong model name is an OpenAI 404 per request: recorded as errors, the level still summarized."""
    report = asyncio.run(loadgen.sweep(live.url, server_fixtures.API_KEY, "no-such-model",
                                       [standard(4)["text"]], [1], requests=2, warmup=0))
    level = report["workloads"]["text"]["1"]
    assert level["ok"] == 0 and level["requests"] == 2
    assert level["errors"] and level["errors"][0].startswith("HTTP 404 not_found_error: ")
    assert level["ttft_s"] is None


def test_image_rows_control_writes_image_rows_and_no_image(live, image_tokens: int) -> None:
    """The interference benchmark's control: as long as image-out, one image short, so nothing is decoded."""

    async def both() -> list:
        async with loadgen.client_for(live.url, server_fixtures.API_KEY) as client:
            return [await loadgen.send(client, server_fixtures.MODEL, w.build(0))
                    for w in (image_out_chat(), image_rows_chat(image_tokens))]

    whole, cut = asyncio.run(both())
    assert whole.ok and cut.ok, (whole.error, cut.error)
    assert (whole.output_tokens, len(whole.png)) == (image_tokens, 1)
    assert (cut.output_tokens, cut.png) == (image_tokens - 3, [])


def test_interference_phases_against_a_url(live, image_tokens: int, tmp_path: Path) -> None:
    """d)'s four phases as a user runs them against a deployment: text ITL alone and beside each background."""
    out = tmp_path / "itl.json"
    interference.main(["--url", live.url, "--api-key", server_fixtures.API_KEY, "--concurrency", "2",
                       "--requests", "3", "--max-tokens", "8", "--image-tokens", str(image_tokens),
                       "--settle-s", "0.5", "--out", str(out)])
    report = json.loads(out.read_text())
    assert list(report["phases"]) == ["alone", "with_text", "with_image_rows", "with_image_out"]
    for phase in report["phases"].values():
        assert phase["ok"] == phase["requests"] == 3 and phase["itl_s"]["p99"] > 0
    others = ("alone", "with_text", "with_image_rows")
    assert set(report["ratios"]) == {f"itl_p99_with_image_out_vs_{other}" for other in others}
    assert all(r > 0 for r in report["ratios"].values())
