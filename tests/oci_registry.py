"""A read-only OCI distribution registry on loopback, serving one OCI image layout directory.

Just enough of the distribution API for `ctr images pull --plain-http` (no registry is reachable
from these machines): `GET /v2/`, `HEAD|GET /v2/NAME/manifests/TAG|DIGEST`,
`HEAD|GET /v2/NAME/blobs/DIGEST`. Every blob request is recorded, so a test can tell which
layers a client actually fetched.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

_PATH = re.compile(r"^/v2/(?P<name>.+)/(?P<kind>manifests|blobs)/(?P<ref>[^/]+)$")


class Registry:
    def __init__(self, layout: Path):
        self.layout = layout
        index = json.loads((layout / "index.json").read_text())
        self.tags: dict[str, dict] = {}
        for desc in index["manifests"]:
            tag = desc.get("annotations", {}).get("org.opencontainers.image.ref.name")
            if tag:
                self.tags[tag] = desc
        self.media: dict[str, str] = {d["digest"]: d["mediaType"] for d in index["manifests"]}
        for d in list(self.media):
            self._learn(d)
        self.requests: list[tuple[str, str]] = []      # (method, path)
        self._lock = threading.Lock()
        self.httpd: ThreadingHTTPServer | None = None

    def _learn(self, digest: str) -> None:
        """Record media types of manifests reachable from a manifest or index."""
        doc = json.loads(self.blob(digest).read_bytes())
        for d in doc.get("manifests", []):
            self.media[d["digest"]] = d["mediaType"]
            self._learn(d["digest"])

    def blob(self, digest: str) -> Path:
        alg, _, hexd = digest.partition(":")
        return self.layout / "blobs" / alg / hexd

    @property
    def address(self) -> str:
        assert self.httpd is not None
        host, port = self.httpd.server_address[:2]
        return f"{host}:{port}"

    def blob_gets(self) -> list[str]:
        """Digests of blobs whose content was sent (GET, not HEAD)."""
        with self._lock:
            return [p.rsplit("/", 1)[1] for m, p in self.requests
                    if m == "GET" and "/blobs/" in p]

    def handler(self) -> type[BaseHTTPRequestHandler]:
        reg = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:   # quiet
                pass

            def _answer(self, body: bool) -> None:
                with reg._lock:
                    reg.requests.append((self.command, self.path))
                if self.path.rstrip("/") == "/v2":
                    self._send(200, b"{}", "application/json", None, body)
                    return
                m = _PATH.match(self.path.split("?")[0])
                if not m:
                    self._send(404, b"", "text/plain", None, body)
                    return
                ref = m["ref"]
                if m["kind"] == "manifests":
                    desc = reg.tags.get(ref)
                    digest = desc["digest"] if desc else ref
                    media = reg.media.get(digest)
                    if media is None:
                        self._send(404, b"", "text/plain", None, body)
                        return
                else:
                    digest, media = ref, "application/octet-stream"
                path = reg.blob(digest)
                if not path.is_file():
                    self._send(404, b"", "text/plain", None, body)
                    return
                self._send(200, path.read_bytes(), media, digest, body)

            def _send(self, code: int, data: bytes, ctype: str, digest: str | None,
                      body: bool) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                if digest:
                    self.send_header("Docker-Content-Digest", digest)
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def do_GET(self) -> None:
                self._answer(True)

            def do_HEAD(self) -> None:
                self._answer(False)

        return Handler


@contextlib.contextmanager
def serving_registry(layout: Path) -> Iterator[Registry]:
    reg = Registry(layout)
    reg.httpd = ThreadingHTTPServer(("127.0.0.1", 0), reg.handler())
    t = threading.Thread(target=reg.httpd.serve_forever, daemon=True)
    t.start()
    try:
        yield reg
    finally:
        reg.httpd.shutdown()
        reg.httpd.server_close()
        t.join(10)
