"""`actstream serve --cluster`: live streams spread over Ray actors, one endpoint for subscribers.

This process (the driver) runs the forwarder (stream/forward.py: where subscribers connect, and where every
shard publishes), the control endpoint (stream/control.py: `actstream streams add|remove|list` as against one
process) and the supervisor; the streams run in shard actors (cluster/shard.py), each a many-stream `Server`,
placed by resources (`cpus`/`gpus` each, spread over the nodes; one per node by default) and restarted by Ray
without limit.

The supervisor holds what should run where (stream -> shard, epoch) and reconciles it with what each shard
says it runs, every POLL_S: a shard that Ray says died (its node or its process was lost: Ray notices in about
2 s), or that has not answered for LOST_S, loses its streams to the shards that answer, the least loaded first, each started again with its epoch one higher
(a status with `restarted: true` first, seq from 0, its LSTM state afresh); a shard that answers without a
stream it should run (Ray restarted it: a new process, no state) starts it again the same way; a shard still
running a stream that moved away is told to drop it. A stream that ends or fails (a recording's end, a file
missing on that node) stays ended: it is the stream's, not the cluster's, to fix. The cluster's own `status`
(every second, topic `status`, as a process's) names every stream with its phase and every shard with its
node, its streams and whether it answers.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from actstream.common.errors import ConfigError, PublishError
from actstream.common.closing import close_parts

log = logging.getLogger(__name__)

POLL_S = 0.5  # how often the shards are asked what they run
LOST_S = 5.0  # a shard silent this long (hung, or a node Ray has not given up on yet) loses its streams
STARTUP_S = 60.0  # how long the shards may take to start (Ray's workers, the model's engines)
ADD_WAIT_S = 10.0  # how long `streams add` waits for the shard's answer
FORWARDER_KEY = "shard"  # with keys: the shards' client key pair, DIR/shard.key_secret (actstream keys DIR --client shard)


@dataclass
class ClusterOptions:
    """publish: the forwarder's endpoint for subscribers; inbound: where the shards publish into it (an address
    every node reaches: off the loopback only with keys); control: the control endpoint (None: none); address:
    the Ray cluster (None: a local one); shards: how many (0: one per node); cpus, gpus: each shard's share;
    seconds: stop after this long (0: until stopped)."""

    publish: str
    inbound: str = "tcp://127.0.0.1:5558"
    control: str | None = None
    address: str | None = None
    shards: int = 0
    cpus: float = 1.0
    gpus: float = 0.0
    seconds: float = 0.0


@dataclass
class _Entry:
    """A stream the cluster runs: its table, its shard, its epoch, and where it stands."""

    table: dict
    shard: int
    epoch: int = 0
    since: float = field(default_factory=time.monotonic)  # when it was (re)started on its shard
    ended: dict | None = None  # {phase, problem} once it ended or failed
    adding: object = None  # the shard's answer to its add, until it came


@dataclass
class _ShardState:
    actor: object
    name: str
    last_ok: float = field(default_factory=time.monotonic)
    answer: dict | None = None
    pending: object = None  # the poll in flight
    asked: float = 0.0  # when it was asked
    answer_asked: float = 0.0  # when the question of `answer` was asked: streams added later are not in it
    restarts: int = 0
    pid: int | None = None
    down: bool = False  # Ray said it died or is restarting (its node or process was lost)


class ClusterServer:
    """Build it (forwarder, Ray, shards, control), add streams, run() until stop is set; close() in order."""

    def __init__(self, cfg, opts: ClusterOptions, stop: threading.Event | None = None):
        from actstream.cluster.raynodes import alive_nodes, start_ray, worker_env
        from actstream.engines.bundle import load_spec
        from actstream.stream.forward import Feed, Forwarder, feed_keys
        from actstream.stream.publish import Publisher

        self.cfg, self.opts = cfg, opts
        self.stop = stop or threading.Event()
        self._lock = threading.Lock()
        self.streams: dict[str, _Entry] = {}
        self.shards: list[_ShardState] = []
        self.forwarder = self.control = self.feed = self.status = None
        self._ray_started = False
        self._status_too_large = False
        self.started_at = time.monotonic()
        spec = load_spec(cfg.model.path)
        if not spec.causal:
            raise ConfigError(f"model {spec.name} is a {spec.arch}: it looks ahead in time and cannot serve live "
                              f"streams; use `actstream batch` or a causal model")
        keys, insecure = cfg.publish.keys or None, cfg.publish.insecure
        curve = feed_keys(keys, FORWARDER_KEY) if keys else None
        try:
            self.forwarder = Forwarder(opts.publish, opts.inbound, keys, insecure, cfg.publish.hwm)
            self.ray, self._ray_started = start_ray(opts.address)
            inbound = self._reachable(self.forwarder.inbound)
            self.feed = Feed(inbound, curve)
            self.status = Publisher(None, None, "cluster", spec.tag)  # the cluster's own status, numbered
            self.status.listeners.append(lambda msg: self.feed.send(msg["topic"], _encode(msg)))
            n = opts.shards or len(alive_nodes(self.ray))
            shard_class = self.ray.remote(_shard_class()).options(
                num_cpus=opts.cpus, num_gpus=opts.gpus, max_restarts=-1, max_task_retries=0,
                runtime_env=worker_env(), scheduling_strategy="SPREAD")
            self.shards = [_ShardState(shard_class.remote(cfg, f"shard{i}", inbound, curve), f"shard{i}")
                           for i in range(n)]
            self.feed.wait_ready(5.0)
            self._wait_for_shards()
            if opts.control:
                from actstream.stream.control import ControlServer

                self.control = ControlServer(opts.control, self._handle, keys=keys, insecure=insecure)
        except Exception:
            self.close()
            raise
        self.step_ms = cfg.step.resolve(spec.step_ms, spec.name)

    def _wait_for_shards(self) -> None:
        """Until every shard answered once (its model loaded), STARTUP_S at most; ConfigError if none did."""
        deadline = time.monotonic() + STARTUP_S
        while time.monotonic() < deadline and not self.stop.is_set():
            self._poll()
            if all(s.answer is not None for s in self.shards):
                return
        up = [s.name for s in self.shards if s.answer is not None]
        if not up:
            raise ConfigError(f"no shard started within {STARTUP_S:.0f} s: check that the cluster has "
                              f"{self.opts.cpus:g} CPU(s) free per shard (--cpus-per-shard) and that actstream is "
                              f"installed on its nodes")
        log.warning("%d of %d shards started within %.0f s; serving on %s", len(up), len(self.shards), STARTUP_S,
                    ", ".join(up))

    def _reachable(self, bound: str) -> str:
        """The inbound endpoint as the shards connect to it: a wildcard bind becomes this node's address."""
        from actstream.stream.security import parse_endpoint

        transport, host, port = parse_endpoint(bound)
        if transport == "tcp" and host in ("*", "0.0.0.0", "[::]"):
            return f"tcp://{self.ray.util.get_node_ip_address()}:{port}"
        return bound

    # --- streams in and out (the control thread, or the caller before run) ---
    def add(self, table: dict) -> str:
        """Start a stream on the least loaded shard that answers; ConfigError if it is refused."""
        from actstream.stream.streamsfile import stream_spec

        spec = stream_spec(table, "cluster add", Path.cwd())  # checked here first: one line, nothing started
        with self._lock:
            if spec.id in self.streams and self.streams[spec.id].ended is None:
                raise ConfigError(f"stream {spec.id!r} exists already: remove it first or choose another id")
            if len([e for e in self.streams.values() if e.ended is None]) >= self.cfg.serve.max_streams * len(
                    self.shards):
                raise ConfigError(f"the cluster serves its most streams (serve.max_streams = "
                                  f"{self.cfg.serve.max_streams} per shard, {len(self.shards)} shards)")
            shard = self._least_loaded(set())
            if shard is None:
                raise ConfigError("no shard answers yet: wait for the cluster to start, or check its nodes")
            entry = _Entry(spec.to_dict(), shard)
            entry.adding = self.shards[shard].actor.add.remote(entry.table, 0)
            entry.since = time.monotonic()  # after the call: any later question reaches the shard after it
            self.streams[spec.id] = entry
        try:
            reply = self.ray.get(entry.adding, timeout=ADD_WAIT_S)
        except Exception as exc:  # the shard was lost meanwhile: the supervisor starts it elsewhere
            log.warning("stream %s: its shard did not answer (%s); the supervisor will place it", spec.id, exc)
            return spec.id
        if not reply["ok"]:
            with self._lock:
                self.streams.pop(spec.id, None)
            raise ConfigError(reply["error"])
        return spec.id

    def remove(self, sid: str) -> None:
        with self._lock:
            entry = self.streams.pop(sid, None)
        if entry is None:
            raise ConfigError(f"no stream {sid!r} here: `actstream streams list` names them")
        self.shards[entry.shard].actor.remove.remote(sid)

    def list(self) -> list[dict]:
        """Every stream, as one process lists them, with its shard, node and epoch."""
        out = []
        with self._lock:
            for sid, e in self.streams.items():
                shard = self.shards[e.shard]
                here = (shard.answer or {}).get("streams", {}).get(sid)
                row = {"id": sid, "phase": "opening", **(here or {}), **e.table, "shard": shard.name,
                       "node": (shard.answer or {}).get("node"), "epoch": e.epoch}
                if e.ended:
                    row.update(e.ended)
                out.append(row)
        return out

    def _handle(self, req: dict) -> dict:
        op = req["op"]
        if op == "list":
            return {"streams": self.list()}
        if op == "add":
            return {"id": self.add(req.get("stream"))}
        if op == "remove":
            sid = req.get("id")
            if not isinstance(sid, str):
                raise ConfigError("remove needs the stream's id")
            self.remove(sid)
            return {"id": sid}
        raise ConfigError(f"unknown op {op!r}: expected list, add or remove")

    # --- the supervisor ---
    def run(self) -> None:
        """Reconcile every POLL_S and publish the cluster's status every second, until stopped (or seconds)."""
        deadline = time.monotonic() + self.opts.seconds if self.opts.seconds else None
        last_status = 0.0
        while not self.stop.is_set() and (deadline is None or time.monotonic() < deadline):
            self._poll()
            self._reconcile()
            now = time.monotonic()
            if now - last_status >= 1.0:
                last_status = now
                self._publish_status("running")
            self.stop.wait(POLL_S)
        self._publish_status("end")

    def _poll(self) -> None:
        """Ask every shard what it runs (one question in flight each); note who answered."""
        from ray.exceptions import GetTimeoutError, RayActorError

        for s in self.shards:
            if s.pending is None:
                s.pending, s.asked = s.actor.poll.remote(), time.monotonic()
        ready, _ = self.ray.wait([s.pending for s in self.shards], num_returns=len(self.shards), timeout=POLL_S)
        now = time.monotonic()
        for s in self.shards:
            if s.pending not in ready:
                continue
            ref, s.pending = s.pending, None
            try:
                answer = self.ray.get(ref, timeout=0)
            except (RayActorError, GetTimeoutError) as exc:
                log.debug("%s: %s", s.name, exc)
                s.down = s.down or isinstance(exc, RayActorError)
                continue
            if s.pid is not None and answer["pid"] != s.pid:
                s.restarts += 1
                log.warning("%s was restarted by Ray (pid %s, node %s)", s.name, answer["pid"], answer["node"][:12])
            s.pid, s.answer, s.answer_asked, s.last_ok, s.down = answer["pid"], answer, s.asked, now, False

    def _up(self, i: int) -> bool:
        """The shard answers: Ray has not said it died, and it answered within LOST_S."""
        s = self.shards[i]
        return s.answer is not None and not s.down and time.monotonic() - s.last_ok < LOST_S

    def _least_loaded(self, avoid: set[int]) -> int | None:
        """(Under the lock.) The shard that answers with the fewest live streams."""
        load = {i: 0 for i in range(len(self.shards)) if self._up(i) and i not in avoid}
        for e in self.streams.values():
            if e.ended is None and e.shard in load:
                load[e.shard] += 1
        return min(load, key=lambda i: (load[i], i)) if load else None

    def _reconcile(self) -> None:
        moves = []
        with self._lock:
            for sid, e in self.streams.items():
                if e.ended is not None or not self._added(sid, e):
                    continue
                shard = self.shards[e.shard]
                answer = shard.answer or {}
                if self._up(e.shard):
                    here = answer["streams"].get(sid)
                    ended = answer["ended"].get(sid)
                    if here is not None and here["epoch"] == e.epoch:
                        continue
                    if ended is not None and ended["epoch"] == e.epoch:
                        e.ended = {"phase": ended["phase"] or "ended", "problem": ended["problem"]}
                        continue
                    if shard.answer_asked < e.since:
                        continue  # (re)started after this answer's question: not in it yet
                    why = f"{shard.name} was restarted (node {str(answer.get('node'))[:12]}): its streams were lost"
                    target = e.shard
                else:
                    why = f"{shard.name} stopped answering (its node or process was lost)"
                    target = self._least_loaded({e.shard})
                    if target is None:
                        continue  # no shard answers: wait
                e.shard, e.epoch = target, e.epoch + 1
                moves.append((sid, e, why))
            stale = [(i, sid) for i, s in enumerate(self.shards) if self._up(i)
                     for sid in (s.answer or {}).get("streams", {})
                     if sid not in self.streams or self.streams[sid].shard != i]
        for sid, e, why in moves:
            log.warning("stream %s: %s; starting it on %s (epoch %d)", sid, why, self.shards[e.shard].name, e.epoch)
            e.adding = self.shards[e.shard].actor.add.remote(e.table, e.epoch, why)
            e.since = time.monotonic()
        for i, sid in stale:
            self.shards[i].actor.remove.remote(sid)

    def _added(self, sid: str, e: _Entry) -> bool:
        """(Under the lock.) False while the shard's answer to the stream's add is awaited; a refusal (a file
        missing on that node) ends the stream as failed."""
        from ray.exceptions import RayActorError

        if e.adding is None:
            return True
        ready, _ = self.ray.wait([e.adding], timeout=0)
        if not ready and self._up(e.shard):
            return False
        ref, e.adding = e.adding, None
        try:
            reply = self.ray.get(ref, timeout=0) if ready else {"ok": True}
        except RayActorError:
            return True  # its shard was lost meanwhile: placed again below
        if not reply["ok"]:
            log.warning("stream %s could not be started on %s: %s", sid, self.shards[e.shard].name, reply["error"])
            e.ended = {"phase": "failed", "problem": reply["error"]}
            return False
        return True

    def _publish_status(self, state: str) -> None:
        """The cluster's own status: its streams (id -> phase), ticks summed over its shards, and its shards."""
        with self._lock:
            phases = {}
            for sid, e in self.streams.items():
                here = ((self.shards[e.shard].answer or {}).get("streams") or {}).get(sid)
                phases[sid] = e.ended["phase"] if e.ended else (here or {}).get("phase", "opening")
            shards = {s.name: {"node": (s.answer or {}).get("node"), "answers": self._up(i), "restarts": s.restarts,
                               "streams": sum(1 for e in self.streams.values() if e.shard == i and e.ended is None)}
                      for i, s in enumerate(self.shards)}
            statuses = [s.answer["status"] for i, s in enumerate(self.shards)
                        if self._up(i) and s.answer.get("status")]
        fwd = self.forwarder
        fields = {"state": state, "streams": phases, "shards": shards, "clock": "wall", "step_ms": self.step_ms,
                  "backend": self.cfg.model.backend, **_sum_ticks(statuses),
                  "forwarder": {"passed": fwd.passed, "rejected": fwd.rejected, "welcomes": fwd.welcomes,
                                "overflows": sum(list(fwd.bus_overflows.values()))}}
        try:
            self.status.publish("status", time.monotonic() - self.started_at, time.time(), state, None, {}, **fields)
        except PublishError as exc:  # thousands of streams make it larger than a message may be
            if not self._status_too_large:
                log.warning("the cluster status is not published: %s", exc)
            self._status_too_large = True

    def close(self) -> None:
        """Shards, control, status feed, forwarder, Ray (if this process started it). Idempotent."""
        from actstream.cluster.raynodes import stop_ray

        for s in self.shards:
            try:
                self.ray.kill(s.actor, no_restart=True)
            except Exception as exc:  # a shard already gone: nothing to stop
                log.debug("%s: %s", s.name, exc)
        self.shards = []
        close_parts(self, "control", "status", "feed", "forwarder")
        stop_ray(self._ray_started)
        self._ray_started = False


def _shard_class():
    from actstream.cluster.shard import Shard

    return Shard


def _encode(msg: dict) -> bytes:
    from actstream.stream.publish import encode

    return encode(msg)


def _sum_ticks(statuses: list[dict]) -> dict:
    """The shards' process statuses as one: ticks summed, batches merged (the mean of means, the largest max)."""
    out = {"ticks": sum(s.get("ticks", 0) for s in statuses), "late_ticks": sum(s.get("late_ticks", 0) for s in statuses),
           "skipped_ticks": sum(s.get("skipped_ticks", 0) for s in statuses), "batch": {}}
    for key in {k for s in statuses for k in (s.get("batch") or {})}:
        rows = [s["batch"][key] for s in statuses if key in (s.get("batch") or {})]
        out["batch"][key] = {"mean": sum(r["mean"] for r in rows) / len(rows), "max": max(r["max"] for r in rows)}
    return out
