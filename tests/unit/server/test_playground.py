"""The playground's routes without an engine: the page, its fixed assets, its config, and --no-playground."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
from starlette.testclient import TestClient

from engine.shared.families import EMU3
from server.app import create_app
from server.cli import build_parser, settings_from_args
from server.routes.playground import ASSETS, STATIC
from server.settings import Settings


def _client(**kw) -> TestClient:
    return TestClient(create_app(Settings(model="/m", served_model_name="tiny", engine_args=None, **kw)))


def test_page_assets_and_config():
    client = _client(api_key="k")
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "connect-src 'self'" in page.headers["content-security-policy"]
    for name, media_type in ASSETS.items():
        asset = client.get(f"/playground/{name}")
        assert asset.status_code == 200 and asset.headers["content-type"].startswith(media_type)
    assert client.get("/playground/config").json() == {"model": "tiny", "api_key_required": True,
                                                        "image_sizes": None}  # null: the model is loading
    assert _client().get("/playground/config").json()["api_key_required"] is False


def test_config_offers_the_sizes_the_model_writes(tmp_path):
    """Emu3's common ratios at its default area, within its image processor's range; none without a decoder."""
    (tmp_path / "preprocessor_config.json").write_text('{"min_pixels": 4096, "max_pixels": 16384}')
    client = _client(family=EMU3)
    sizes = EMU3.image_sizes(None, 8, str(tmp_path))
    client.app.state.engine = SimpleNamespace(can_paint=True, image_sizes=sizes)
    assert client.get("/playground/config").json()["image_sizes"] == {
        "128x128": "1:1", "144x112": "4:3", "112x144": "3:4", "168x96": "16:9", "96x168": "9:16"}
    client.app.state.engine = SimpleNamespace(can_paint=False, image_sizes=None)
    assert client.get("/playground/config").json()["image_sizes"] == {}


@pytest.mark.parametrize("path", ["/playground/index.html", "/playground/..%2Fapp.py", "/playground/nope.js"])
def test_only_listed_assets_are_served(path):
    resp = _client().get(path)
    assert resp.status_code == 404 and resp.json()["error"]["message"]


def test_no_other_host_is_named():
    """No CDN, font or analytics host: every URL in the page and its assets is this server's."""
    for path in [STATIC / "index.html", *(STATIC / name for name in ASSETS)]:
        urls = re.findall(r"(?:https?:)?//[\w.-]+", path.read_text())
        assert urls in ([], ["http://www.w3.org"]), (path.name, urls)  # the SVG namespace is a name, not a fetch


def test_no_playground_flag(tmp_path):
    settings = settings_from_args(build_parser().parse_args(["--model", str(tmp_path), "--no-playground"]))
    assert settings.playground is False
    assert settings_from_args(build_parser().parse_args(["--model", str(tmp_path)])).playground is True
    client = _client(playground=False)
    resp = client.get("/")
    assert resp.status_code == 404 and resp.json()["error"]["type"] == "not_found_error"
    assert client.get("/playground/app.js").status_code == 404
