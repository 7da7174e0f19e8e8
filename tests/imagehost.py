"""A real local HTTP server for remote image URL tests: serves PNG bytes, redirects, slow and huge bodies."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class ImageHost:
    """Paths: /image.png (the PNG), /chunked.png (the PNG without Content-Length), /slow.png (one byte a
    second), /same-host (redirect to /image.png), /loop (redirects to itself), /other-host (redirect to
    the same file on 'localhost'), anything else 404."""

    def __init__(self, png: bytes) -> None:
        self.png = png
        host = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_: object) -> None:
                pass

            def do_GET(self) -> None:
                port = self.server.server_address[1]
                redirects = {"/same-host": "/image.png", "/loop": "/loop",
                             "/other-host": f"http://localhost:{port}/image.png"}
                if self.path in redirects:
                    self.send_response(302)
                    self.send_header("Location", redirects[self.path])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif self.path == "/image.png":
                    self._send(host.png, length=True)
                elif self.path == "/chunked.png":
                    self._send(host.png, length=False)
                elif self.path == "/slow.png":
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(host.png)))
                    self.end_headers()
                    try:
                        for i in range(len(host.png)):
                            self.wfile.write(host.png[i:i + 1])
                            self.wfile.flush()
                            time.sleep(1)
                    except (BrokenPipeError, ConnectionResetError):
                        pass  # the client gave up, as it should
                else:
                    self.send_error(404)

            def _send(self, body: bytes, *, length: bool) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                if length:
                    self.send_header("Content-Length", str(len(body)))
                else:
                    self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    @contextmanager
    def running(self) -> Iterator[ImageHost]:
        thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._server.shutdown()
            self._server.server_close()
