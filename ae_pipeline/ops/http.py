"""One small HTTP server for operators: ``/metrics`` (Prometheus), ``/healthz`` and ``/readyz``.

* ``/metrics``: the registry in Prometheus' text format.
* ``/healthz``: 200 while the process is alive and its loop keeps turning (Kubernetes'
  liveness probe: a stuck loop gets the pod restarted), else 503.
* ``/readyz``: 200 once it can do its work (the consumer: a model is loaded and partitions are
  assigned), else 503 (Kubernetes' readiness probe).

The probes' bodies say why in one line of JSON (``{"ok": false, "reason": "..."}``).

Example:
    >>> from prometheus_client import CollectorRegistry
    >>> import urllib.request
    >>> server = OpsServer(CollectorRegistry(), port=0, host="127.0.0.1",
    ...                    health=lambda: (True, "loop turning"), ready=lambda: (False, "no model"))
    >>> urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz").status
    200
    >>> server.close()
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

_log = logging.getLogger(__name__)

Probe = Callable[[], tuple[bool, str]]


def _always() -> tuple[bool, str]:
    return True, "ok"


class OpsServer:
    """Serves ``/metrics``, ``/healthz`` and ``/readyz`` from a daemon thread.

    Args:
        registry: the Prometheus registry to expose.
        port: the TCP port (0: any free one; :attr:`port` says which).
        host: the address to listen on (default all: a pod's probes come from the kubelet).
        health: ``() -> (ok, reason)`` for ``/healthz``.
        ready: ``() -> (ok, reason)`` for ``/readyz``.

    Raises:
        OSError: the port is taken (the message names it).
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        port: int,
        host: str = "0.0.0.0",
        health: Probe = _always,
        ready: Probe = _always,
    ) -> None:
        routes: dict[str, Callable[[], tuple[int, str, bytes]]] = {
            "/metrics": lambda: (200, CONTENT_TYPE_LATEST, generate_latest(registry)),
            "/healthz": lambda: _probe(health),
            "/readyz": lambda: _probe(ready),
        }

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                route = routes.get(self.path.split("?", 1)[0])
                if route is None:
                    status, kind, body = 404, "text/plain", b"/metrics, /healthz or /readyz\n"
                else:
                    try:
                        status, kind, body = route()
                    except Exception as err:  # a probe that fails is a failed probe
                        status, kind = 503, "application/json"
                        body = json.dumps({"ok": False, "reason": f"{type(err).__name__}"}).encode()
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                _log.debug("ops http: " + format, *args)

        try:
            self._server = ThreadingHTTPServer((host, port), Handler)
        except OSError as err:
            raise OSError(f"cannot serve metrics on {host}:{port}: {err.strerror or err}") from err
        self._server.daemon_threads = True
        self.host = host
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="ae-pipeline-ops-http", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        """Stops serving (idempotent)."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout=5)
        self._server.server_close()

    def __enter__(self) -> OpsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _probe(check: Probe) -> tuple[int, str, bytes]:
    ok, reason = check()
    body = json.dumps({"ok": bool(ok), "reason": reason}).encode() + b"\n"
    return (200 if ok else 503), "application/json", body


__all__ = ["OpsServer", "Probe"]
