"""The bytes behind a request's ``image_url``: ``data:`` URLs always, remote ``http(s)`` URLs only when
the operator allowlists their hosts.

Fetching URLs for clients turns the server into a proxy into its own network, so remote fetches are
off by default and bounded when on: an allowlist of hosts, a byte limit counted while reading, one
deadline for the whole fetch (a slow sender cannot hold a request open), and redirects followed only
within the same host. ``file:`` and every other scheme are always refused.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import httpx

from server.errors import BadRequest

MAX_REDIRECTS = 3


@dataclass(frozen=True, slots=True)
class RemoteImagePolicy:
    """Which remote image URLs may be fetched; no allowed hosts means none."""

    allowed_hosts: frozenset[str] = frozenset()  # exact host names or IPs; "*.example.com" for subdomains
    max_bytes: int = 20 * 1024 * 1024
    timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if self.max_bytes <= 0 or self.timeout_s <= 0:
            raise ValueError("remote image max_bytes and timeout_s must be > 0")

    @property
    def enabled(self) -> bool:
        return bool(self.allowed_hosts)

    def allows(self, host: str | None) -> bool:
        if not host:
            return False
        host = host.lower().rstrip(".")
        return host in self.allowed_hosts or any(
            entry.startswith("*.") and host.endswith(entry[1:]) for entry in self.allowed_hosts)


async def image_url_bytes(url: str, policy: RemoteImagePolicy) -> bytes:
    scheme = url.partition(":")[0].lower()
    if scheme == "data":
        return _data_url_bytes(url)
    if scheme in ("http", "https") and policy.enabled:
        return await _fetch(url, policy)
    accepted = "a data: URL or an http(s) URL on an allowed host" if policy.enabled else \
        "a data: URL (data:image/png;base64,...); this server does not fetch remote URLs"
    raise BadRequest(f"image_url must be {accepted}", param="image_url", code="invalid_image_url")


def _data_url_bytes(url: str) -> bytes:
    header, _, payload = url.partition(",")
    if not header.endswith(";base64") or not header[5:].startswith("image/"):
        raise BadRequest("image_url must be base64 image data (data:image/...;base64,...)", param="image_url")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("image_url holds invalid base64", param="image_url") from None


async def _fetch(url: str, policy: RemoteImagePolicy) -> bytes:
    host = urlsplit(url).hostname
    if not policy.allows(host):
        raise BadRequest(f"image_url host '{host}' is not on this server's allowlist", param="image_url",
                         code="image_url_host_not_allowed")
    try:
        async with asyncio.timeout(policy.timeout_s), \
                httpx.AsyncClient(follow_redirects=False, timeout=policy.timeout_s) as client:
            for _ in range(MAX_REDIRECTS + 1):
                async with client.stream("GET", url) as response:
                    if not response.is_redirect:
                        return await _body(response, policy.max_bytes)
                    url = _same_host_redirect(url, response.headers.get("location", ""))
            raise BadRequest(f"image_url redirected more than {MAX_REDIRECTS} times", param="image_url")
    except TimeoutError:
        raise BadRequest(f"fetching image_url took longer than {policy.timeout_s:g} s", param="image_url",
                         code="image_url_timeout") from None
    except httpx.HTTPError as exc:
        raise BadRequest(f"could not fetch image_url ({type(exc).__name__})", param="image_url",
                         code="image_url_unreachable") from None


def _same_host_redirect(url: str, location: str) -> str:
    target = urljoin(url, location)
    if urlsplit(target).scheme not in ("http", "https") or urlsplit(target).hostname != urlsplit(url).hostname:
        raise BadRequest("image_url redirected to another host; redirects are followed only within a host",
                         param="image_url", code="image_url_redirect_refused")
    return target


async def _body(response: httpx.Response, max_bytes: int) -> bytes:
    if response.status_code != 200:
        raise BadRequest(f"fetching image_url returned HTTP {response.status_code}", param="image_url",
                         code="image_url_unreachable")
    too_large = BadRequest(f"the image at image_url is larger than {max_bytes} bytes", param="image_url",
                           code="image_too_large")
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise too_large
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > max_bytes:
            raise too_large
    return bytes(body)
