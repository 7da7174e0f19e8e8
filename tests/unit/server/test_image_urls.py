"""Image URLs: data: always, http(s) only from allowlisted hosts, bounded in bytes, time and redirects."""

from __future__ import annotations

import asyncio
import base64

import pytest
from imagehost import ImageHost

from server.errors import BadRequest
from server.image_urls import RemoteImagePolicy, image_url_bytes

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8  # bytes only: decoding is not this module's job
OPEN = RemoteImagePolicy(allowed_hosts=frozenset({"127.0.0.1"}), max_bytes=10_000, timeout_s=2)


@pytest.fixture(scope="module")
def host():
    with ImageHost(PNG).running() as running:
        yield running


def fetch(url: str, policy: RemoteImagePolicy = OPEN) -> bytes:
    return asyncio.run(image_url_bytes(url, policy))


def refused(url: str, policy: RemoteImagePolicy = OPEN) -> BadRequest:
    with pytest.raises(BadRequest) as info:
        fetch(url, policy)
    assert info.value.param == "image_url"
    return info.value


def test_data_urls_need_no_policy():
    assert fetch(f"data:image/png;base64,{base64.b64encode(PNG).decode()}", RemoteImagePolicy()) == PNG
    assert "invalid base64" in refused("data:image/png;base64,@@@@").message
    assert "base64 image data" in refused("data:text/plain;base64,aGk=").message


def test_remote_urls_are_off_by_default(host):
    error = refused(host.url("/image.png"), RemoteImagePolicy())
    assert "does not fetch remote URLs" in error.message and error.code == "invalid_image_url"


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/x.png", "gopher://127.0.0.1/", "/etc/passwd",
                                 "javascript:alert(1)"])
def test_other_schemes_are_always_refused(url):
    assert refused(url).code == "invalid_image_url"


def test_allowlisted_host_is_fetched(host):
    assert fetch(host.url("/image.png")) == PNG
    assert fetch(host.url("/chunked.png")) == PNG
    assert fetch(host.url("/same-host")) == PNG  # redirect within the host


def test_host_not_on_the_allowlist(host):
    assert refused(host.url("/image.png", host="localhost")).code == "image_url_host_not_allowed"


def test_redirect_to_another_host_is_refused(host):
    assert refused(host.url("/other-host")).code == "image_url_redirect_refused"
    assert "more than 3 times" in refused(host.url("/loop")).message


def test_size_limit_with_and_without_content_length(host):
    small = RemoteImagePolicy(allowed_hosts=OPEN.allowed_hosts, max_bytes=len(PNG) - 1, timeout_s=2)
    assert refused(host.url("/image.png"), small).code == "image_too_large"
    assert refused(host.url("/chunked.png"), small).code == "image_too_large"


def test_one_deadline_for_a_slow_sender(host):
    assert refused(host.url("/slow.png")).code == "image_url_timeout"


def test_http_errors_and_dead_hosts(host):
    assert "HTTP 404" in refused(host.url("/missing.png")).message
    dead = RemoteImagePolicy(allowed_hosts=frozenset({"127.0.0.1"}), timeout_s=2)
    assert refused("http://127.0.0.1:9/x.png", dead).code == "image_url_unreachable"


def test_allowlist_matching():
    policy = RemoteImagePolicy(allowed_hosts=frozenset({"images.example.com", "*.cdn.example.org"}))
    assert policy.allows("images.example.com") and policy.allows("IMAGES.example.com.")
    assert not policy.allows("example.com") and not policy.allows("evil-images.example.com")
    assert policy.allows("a.cdn.example.org") and not policy.allows("cdn.example.org")
    assert not policy.allows("a.cdn.example.org.evil.net") and not policy.allows(None)
