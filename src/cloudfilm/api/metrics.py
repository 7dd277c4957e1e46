"""Prometheus text exposition (format 0.0.4) of the server's counters and latencies."""

from __future__ import annotations

import bisect
import threading
import time
from collections import defaultdict

from starlette.types import ASGIApp, Receive, Scope, Send

#: Upper bounds of the request latency histogram, in seconds.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class LatencyHistogram:
    """Request latencies per route template and method, as a cumulative histogram."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str], list[int]] = defaultdict(
            lambda: [0] * (len(BUCKETS) + 1)
        )
        self._sums: dict[tuple[str, str], float] = defaultdict(float)

    def observe(self, route: str, method: str, seconds: float) -> None:
        with self._lock:
            self._counts[(route, method)][bisect.bisect_left(BUCKETS, seconds)] += 1
            self._sums[(route, method)] += seconds

    def render(self) -> list[str]:
        name = "cloudfilm_http_request_duration_seconds"
        lines = [f"# HELP {name} HTTP request latency.", f"# TYPE {name} histogram"]
        with self._lock:
            for (route, method), counts in sorted(self._counts.items()):
                labels = f'route="{_escape(route)}",method="{method}"'
                running = 0
                for bound, count in zip(BUCKETS, counts, strict=False):
                    running += count
                    lines.append(f'{name}_bucket{{{labels},le="{bound}"}} {running}')
                running += counts[-1]
                lines.append(f'{name}_bucket{{{labels},le="+Inf"}} {running}')
                lines.append(f"{name}_sum{{{labels}}} {self._sums[(route, method)]:.6f}")
                lines.append(f"{name}_count{{{labels}}} {running}")
        return lines


class LatencyMiddleware:
    """Times every HTTP request, to the last byte of its answer, by route template.

    A plain ASGI middleware: Starlette's ``BaseHTTPMiddleware`` adds a task and a stream per
    request, which costs more than many of our answers take.
    """

    def __init__(self, app: ASGIApp, histogram: LatencyHistogram) -> None:
        self.app = app
        self.histogram = histogram

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        try:
            await self.app(scope, receive, send)
        finally:
            template = getattr(scope.get("route"), "path", "<unmatched>")
            self.histogram.observe(template, scope["method"], time.perf_counter() - start)


def render_counters(counters: dict[str, int], totals: dict[str, int]) -> list[str]:
    lines = [
        "# HELP cloudfilm_instances_received_total Instances received by this process, by outcome.",
        "# TYPE cloudfilm_instances_received_total counter",
    ]
    for status in ("stored", "duplicate", "conflict", "rejected"):
        value = counters.get(status, 0)
        lines.append(f'cloudfilm_instances_received_total{{outcome="{status}"}} {value}')
    lines += [
        "# HELP cloudfilm_received_bytes_total Bytes of instances stored by this process.",
        "# TYPE cloudfilm_received_bytes_total counter",
        f"cloudfilm_received_bytes_total {counters.get('bytes', 0)}",
    ]
    for key in ("patients", "studies", "series", "instances", "bytes"):
        name = f"cloudfilm_archive_{key}"
        lines += [f"# HELP {name} Number of {key} in the archive.", f"# TYPE {name} gauge"]
        lines.append(f"{name} {totals.get(key, 0)}")
    return lines


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
