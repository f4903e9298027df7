"""A shard of `serve --cluster`: a Ray actor that is one many-stream `Server` (stream/serve.py) publishing into
the cluster's forwarder (stream/forward.py).

The server's messages go out through a feed into the forwarder, each stream's numbered per epoch: `epoch` counts
how many times the cluster started that stream anew (0 at first; each restart after its shard or node was lost
adds one), `seq` starts from 0 in each epoch (what subscribers already read as a restarted publisher,
client.SeqTracker), and a restarted stream's first message is a status with `restarted: true`, its epoch, and
why (`problem`), published the moment it is started again, before its source has opened. The shard's own
process status is not forwarded: the cluster publishes one `status` for all shards (cluster/serve.py).

An actor restart re-runs the constructor: a fresh server with no stream. The cluster's supervisor, which knows
what each shard should run, starts the lost streams again (on this shard or another).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

READY_S = 10.0  # how long a new shard waits for the forwarder's subscription before it serves anyway


def _source_name(spec) -> str:
    """A stream's `source` field, as the server names it."""
    if spec.file:
        return Path(spec.file).name
    return "live:" + "+".join(x for x in (f"camera={spec.camera}" if spec.camera else "",
                                          f"mic={spec.mic}" if spec.mic else "") if x)


class Shard:
    """cfg: the config (model, policy, serve); name: the shard's name (logs, status); inbound: the forwarder's
    inbound endpoint; curve: the feed's CURVE keys (stream/forward.Feed) or None."""

    def __init__(self, cfg, name: str, inbound: str, curve: tuple | None = None):
        from actstream.stream.forward import Feed
        from actstream.stream.serve import ServeOptions, Server

        self.name = name
        self.feed = Feed(inbound, curve)
        if not self.feed.wait_ready(READY_S):
            log.warning("shard %s: the forwarder at %s has not subscribed after %.0f s; serving anyway", name,
                        inbound, READY_S)
        self._lock = threading.Lock()
        self._epochs: dict[str, int] = {}
        self._seq: dict[str, int] = {}
        self._ended: dict[str, dict] = {}  # id -> {phase, problem} of a stream that ended or failed here
        self.process_status: dict | None = None
        self._stop = threading.Event()
        self.server = Server(cfg, ServeOptions(None, listeners=(self._outbound,)), self._stop)
        self._thread = threading.Thread(target=self.server.run, name=f"shard-{name}", daemon=True)
        self._thread.start()
        self.started = time.time()

    def _outbound(self, msg: dict) -> None:
        """Every message of the server (its tick thread): numbered per epoch and sent into the forwarder."""
        topic = msg["topic"]
        if topic == "status":  # the process's own: the cluster's status sums the shards'
            self.process_status = msg
            return
        sid = msg.get("stream")
        with self._lock:
            if topic.startswith("status/") and msg.get("state") in ("end", "error"):
                self._ended[sid] = {"phase": msg.get("phase"), "problem": msg.get("problem")}
            self._send(topic, {**msg, "seq": 0, "epoch": self._epochs.get(sid, 0)})

    def _send(self, topic: str, msg: dict) -> None:
        """(Under the lock.) Number it in its stream's epoch, encode, send."""
        from actstream.stream.publish import encode

        msg["seq"] = self._seq.get(topic, 0)
        self._seq[topic] = msg["seq"] + 1
        self.feed.send(topic, encode(msg))

    def add(self, table: dict, epoch: int = 0, why: str | None = None) -> dict:
        """Start a stream (a streams-file table, checked here again: a file must exist on this node too).
        epoch > 0: it is started anew after its shard or node was lost; its first message says so."""
        from actstream.common.errors import ActstreamError
        from actstream.stream.streamsfile import stream_spec

        try:
            spec = stream_spec(table, f"shard {self.name}", Path.cwd())
            with self._lock:
                self._epochs[spec.id] = epoch
                self._ended.pop(spec.id, None)
                for topic in [t for t in self._seq if t.endswith(f"/{spec.id}/")]:
                    del self._seq[topic]
                if epoch:
                    self._restarted(spec, epoch, why)
            self.server.add(spec)
        except ActstreamError as exc:
            return {"ok": False, "error": str(exc)}
        return {"ok": True, "id": spec.id}

    def _restarted(self, spec, epoch: int, why: str | None) -> None:
        """(Under the lock.) A restarted stream's first message: its status, saying so."""
        from actstream.stream.publish import SCHEMA_VERSION

        topic = f"status/{spec.id}/"
        self._send(topic, {"v": SCHEMA_VERSION, "topic": topic, "seq": 0, "t": 0.0, "wall": round(time.time(), 4),
                           "label": "running", "score": None, "scores": {}, "source": _source_name(spec),
                           "model": self.server.spec.tag, "state": "running", "steps": 0, "steps_per_s": 0.0,
                           "drops": {}, "latency_ms": None, "backend": self.server.cfg.model.backend,
                           "clock": "wall", "step_ms": self.server.scheduler.step_ms, "stream": spec.id,
                           "head": "status", "phase": "opening", "sat_out": 0, "restarted": True, "epoch": epoch,
                           "problem": why or "started again"})

    def remove(self, sid: str) -> bool:
        return self.server.scheduler.remove(sid)

    def poll(self) -> dict:
        """What the supervisor reconciles: the streams here (id -> phase, epoch, ...), those that ended here,
        the process status, and where this shard runs."""
        import ray

        streams = {s["id"]: {**s, "epoch": self._epochs.get(s["id"], 0)} for s in self.server.scheduler.streams()}
        with self._lock:
            ended = {sid: {**e, "epoch": self._epochs.get(sid, 0)} for sid, e in self._ended.items()
                     if sid not in streams}
        ctx = ray.get_runtime_context()
        return {"streams": streams, "ended": ended, "status": self.process_status, "pid": os.getpid(),
                "node": ctx.get_node_id(), "started": self.started}

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5.0)
        self.server.close()
        self.feed.close()
