"""The service's HTTP endpoints: ``/metrics`` (Prometheus), ``/healthz`` and ``/readyz``.

* ``/healthz`` is liveness: 200 while the poll loop's heartbeat is younger than
  ``max_heartbeat_age_s``, 503 otherwise. It does not look at the broker: a service waiting
  for an unreachable broker is alive as long as its loop turns.
* ``/readyz`` is readiness: 200 once partitions are assigned and their state restored.

Both answer a small JSON body saying why.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

__all__ = ["Health", "HealthServer"]


@dataclass
class Health:
    """Liveness and readiness state, written by the service loop, read by the server."""

    max_heartbeat_age_s: float = 60.0
    heartbeat: float = field(default_factory=time.time)
    ready: bool = False
    reason: str = "starting"

    def beat(self) -> None:
        self.heartbeat = time.time()

    def heartbeat_age(self) -> float:
        return time.time() - self.heartbeat

    def alive(self) -> bool:
        return self.heartbeat_age() < self.max_heartbeat_age_s


class HealthServer:
    """A threaded HTTP server on ``host:port`` (port 0 picks a free one; see ``.port``)."""

    def __init__(
        self,
        health: Health,
        host: str = "127.0.0.1",
        port: int = 0,
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        self.health = health
        self.registry = registry
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, generate_latest(server.registry), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    age = server.health.heartbeat_age()
                    ok = server.health.alive()
                    body = {"status": "ok" if ok else "stalled",
                            "heartbeat_age_seconds": round(age, 3)}
                    self._send(200 if ok else 503, orjson.dumps(body), "application/json")
                elif path == "/readyz":
                    ok = server.health.ready
                    body = {"status": "ready" if ok else "not ready",
                            "reason": server.health.reason}
                    self._send(200 if ok else 503, orjson.dumps(body), "application/json")
                else:
                    self._send(404, b'{"error": "not found"}', "application/json")

            def _send(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                return None

        self._httpd = ThreadingHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True
        self.host = host
        self.port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="streamadapt-http", daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> HealthServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> HealthServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
