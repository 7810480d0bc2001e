"""Service endpoints: `/health`, `/metrics` (Prometheus text format) and `/openapi.json`, plus the request metrics."""

from __future__ import annotations

import bisect
import gc
import os
import threading
import time
from typing import Any

from flask import Blueprint, Flask, Response, current_app, g, jsonify, request
from flask.typing import ResponseReturnValue

from web.deps import get_service
from web.openapi import build_openapi, spec

bp = Blueprint("meta", __name__)

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """Request counts by endpoint, method and status, and a latency histogram per endpoint (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, int], int] = {}
        self.latency: dict[str, tuple[list[int], list[float]]] = {}  # endpoint -> (bucket counts, [sum, count])

    def observe(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        with self._lock:
            key = (endpoint, method, status)
            self.requests[key] = self.requests.get(key, 0) + 1
            counts, total = self.latency.setdefault(endpoint, ([0] * (len(BUCKETS) + 1), [0.0, 0.0]))
            counts[bisect.bisect_left(BUCKETS, seconds)] += 1
            total[0] += seconds
            total[1] += 1

    def render(self, index_points: int) -> str:
        lines = ["# HELP vitrina_http_requests_total HTTP requests by endpoint, method and status.",
                 "# TYPE vitrina_http_requests_total counter"]
        with self._lock:
            for (endpoint, method, status), n in sorted(self.requests.items()):
                lines.append(f'vitrina_http_requests_total{{endpoint="{_esc(endpoint)}",method="{method}",'
                             f'status="{status}"}} {n}')
            lines += ["# HELP vitrina_http_request_duration_seconds Request latency by endpoint.",
                      "# TYPE vitrina_http_request_duration_seconds histogram"]
            for endpoint, (counts, (total, n)) in sorted(self.latency.items()):
                label = f'endpoint="{_esc(endpoint)}"'
                running = 0
                for bound, c in zip(BUCKETS, counts):
                    running += c
                    lines.append(f'vitrina_http_request_duration_seconds_bucket{{{label},le="{bound}"}} {running}')
                lines.append(f'vitrina_http_request_duration_seconds_bucket{{{label},le="+Inf"}} {int(n)}')
                lines.append(f"vitrina_http_request_duration_seconds_sum{{{label}}} {total:.6f}")
                lines.append(f"vitrina_http_request_duration_seconds_count{{{label}}} {int(n)}")
        lines += ["# HELP vitrina_index_items Items in the collection behind the search alias (-1: no index).",
                  "# TYPE vitrina_index_items gauge", f"vitrina_index_items {index_points}"]
        lines += ["# HELP vitrina_gc_collections_total Garbage collector passes of this process by generation.",
                  "# TYPE vitrina_gc_collections_total counter"]
        lines += [f'vitrina_gc_collections_total{{generation="{gen}"}} {stats["collections"]}'
                  for gen, stats in enumerate(gc.get_stats())]
        lines += ["# HELP vitrina_gc_frozen_objects Objects this process froze out of the collector's passes once "
                  "loaded (vitrina serve).", "# TYPE vitrina_gc_frozen_objects gauge",
                  f"vitrina_gc_frozen_objects {gc.get_freeze_count()}"]
        return "\n".join(lines) + "\n"


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def init_metrics(app: Flask) -> Metrics:
    """Time every request and count it under its endpoint (unmatched paths count as 'unmatched')."""
    metrics = Metrics()
    app.extensions["vitrina_metrics"] = metrics

    @app.before_request
    def _start() -> None:
        g.vitrina_t0 = time.perf_counter()

    @app.after_request
    def _observe(resp: Response) -> Response:
        t0 = g.get("vitrina_t0")
        if t0 is not None:
            metrics.observe(request.endpoint or "unmatched", request.method, resp.status_code,
                            time.perf_counter() - t0)
        return resp

    return metrics


@bp.get("/health")
@spec("Liveness and index status", responses={200: {"type": "object"}, 503: None}, tag="meta")
def health() -> ResponseReturnValue:
    """ok when the alias points at a collection; 503 'degraded' otherwise (with the reason). `pid`: the serving
    process; `copy`: with several workers on the embedded store, its copy of the index and the log entry it holds."""
    service = get_service()
    body: dict[str, Any] = {**service.health(), "pid": os.getpid()}
    replica = getattr(service.store, "replica", None)
    if replica is not None:
        body["copy"] = replica.status()
    return jsonify(body), (200 if body["status"] == "ok" else 503)


@bp.get("/metrics")
@spec("Prometheus metrics", responses={200: {"_media": "text/plain", "type": "string"}}, tag="meta")
def metrics() -> ResponseReturnValue:
    """Request counts by endpoint and status, latency histograms and the index size."""
    text = current_app.extensions["vitrina_metrics"].render(get_service().index_size())
    return Response(text, mimetype="text/plain", headers={"Content-Type": "text/plain; version=0.0.4"})


@bp.get("/openapi.json")
@spec("This API's OpenAPI document", responses={200: {"type": "object"}}, tag="meta")
def openapi() -> ResponseReturnValue:
    """Generated from the routes and the @spec declarations next to each view."""
    return jsonify(build_openapi(current_app))
