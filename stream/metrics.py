"""An optional Prometheus endpoint (`--metrics-port`): the figures of the `status` topic, for dashboards.

Fed from the status messages the loop publishes, so the two never disagree.
"""

from __future__ import annotations

import logging

from actstream.common.errors import ConfigError

log = logging.getLogger(__name__)

LATENCY_BUCKETS_MS = (1, 2, 5, 10, 20, 30, 50, 100, 200, 500, 1000)


def check_port(port, what: str = "--metrics-port") -> int:
    """A TCP port to serve on: 1-65535, or 0 for any free one."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigError(f"{what} {port!r} is not a TCP port: pass a port from 1 to 65535 (or 0 for any free one)")
    return port


class Metrics:
    """Serves /metrics on host:port. Metric names start with actstream_."""

    def __init__(self, port: int, host: str = "127.0.0.1", model: str = "", backend: str = "", source: str = ""):
        check_port(port)
        try:
            import prometheus_client as pc
        except ImportError as exc:  # pragma: no cover - a dependency of the package
            raise ConfigError("prometheus-client is not installed: pip install prometheus-client") from exc
        self.registry = pc.CollectorRegistry()
        r = self.registry
        self.steps = pc.Counter("actstream_steps", "steps processed", registry=r)
        self.steps_per_s = pc.Gauge("actstream_steps_per_second", "steps per second over the last status interval",
                                    registry=r)
        self.drops = pc.Gauge("actstream_drops", "frames (video) or samples (audio) overwritten before use, and "
                                                 "device overruns, since the start", ["source"], registry=r)
        self.latency = pc.Histogram("actstream_latency_ms", "capture-to-publish latency per step in ms",
                                    buckets=LATENCY_BUCKETS_MS, registry=r)
        self.stage = pc.Gauge("actstream_stage_ms", "mean time per step of each stage in ms", ["stage"], registry=r)
        self.info = pc.Info("actstream_build", "model, backend and source", registry=r)
        self.info.info({"model": model, "backend": backend, "source": source})
        self._last_steps = 0
        try:
            self._server, self._thread = pc.start_http_server(port, addr=host, registry=r)
        except OSError as exc:
            raise ConfigError(f"cannot serve metrics on {host}:{port}: {exc.strerror}: pass another --metrics-port") from exc
        self.port = self._server.server_port

    def observe_latency(self, ms: float) -> None:
        self.latency.observe(ms)

    def update(self, status: dict) -> None:
        """Take the figures of one status message."""
        self.steps.inc(max(0, status["steps"] - self._last_steps))
        self._last_steps = status["steps"]
        self.steps_per_s.set(status.get("steps_per_s") or 0.0)
        for src, n in (status.get("drops") or {}).items():
            self.drops.labels(src).set(n)
        for stage, ms in (status.get("stage_ms") or {}).items():
            self.stage.labels(stage).set(ms)

    def listener(self, wall_clock: bool):
        """A Publisher listener: status messages update the gauges; on the wall clock, the first label message
        of each step gives its capture-to-publish latency."""
        import time

        last_t = [None]

        def on_message(msg: dict) -> None:
            if msg["topic"] == "status":
                self.update(msg)
            elif wall_clock and msg["t"] != last_t[0]:
                last_t[0] = msg["t"]
                self.observe_latency((time.time() - msg["wall"]) * 1000.0)

        return on_message

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
