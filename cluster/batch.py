"""`actstream batch`: relabel an archive of recordings on Ray, each recording one unit.

Workers are Ray actors that open the model's engines once and then replay recording after recording exactly as
`actstream replay --out` does (the same source, the same batched fast replay on a virtual clock, the same
messages), so each output holds the bytes that command writes for that file. A recording is never split: the
LSTM's state runs through it. The driver (this process) hands each worker one recording at a time, longest
first, and writes what comes back (cluster/recordings.py: whole or not at all).

Faults: a recording that cannot be labelled (corrupt, no track the model needs) comes back with its one-line
reason, is listed in the summary and costs the job nothing else. A worker lost mid-recording (its process or
its node died) is restarted by Ray (without limit: actors restart on any node with room), and the recording goes
back in the queue for whichever worker is free next, MAX_ATTEMPTS times at most (a recording that kills every
worker it meets is listed as failed, not retried forever). Calls are never retried by Ray itself (an actor
restart re-runs the constructor and loses what it held; the driver knows what was in flight). A worker is
replaced after RECYCLE recordings or once its memory passes MAX_RSS_MB, so a leak in a long job stays bounded.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from actstream.cluster.recordings import Recording, write_output
from actstream.common.errors import ActstreamError, ConfigError

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3  # workers a recording may be lost with before it is listed as failed
RECYCLE = 1000  # recordings a worker labels before it is replaced by a fresh process
MAX_RSS_MB = 4096  # a worker whose resident memory passes this is replaced after its recording
RESTART_PROBE_S = 0.5  # how often a worker that is restarting is asked whether it is back
POLL_S = 0.25


@dataclass
class BatchOptions:
    """address: a Ray cluster to join (None: a local Ray in this process); workers: how many actors (0: as many as
    the cluster's CPUs hold at `cpus` each); cpus, gpus: what each actor reserves."""

    address: str | None = None
    workers: int = 0
    cpus: float = 1.0
    gpus: float = 0.0


@dataclass
class BatchSummary:
    recordings: int = 0  # in the job
    labelled: int = 0  # by this run
    skipped: int = 0  # finished by an earlier run
    failed: dict[str, str] = field(default_factory=dict)  # output name -> the reason
    retried: int = 0  # recordings given to another worker after theirs was lost
    workers: int = 0
    media_s: float = 0.0  # of what this run labelled
    wall_s: float = 0.0  # this run, Ray's start included
    startup_s: float = 0.0  # from the start to the first worker ready
    run_s: float = 0.0  # summed over recordings: time inside the workers' replays
    overhead_s: float = 0.0  # summed over recordings: round trip minus time inside the replay (Ray's share)

    @property
    def media_hours_per_hour(self) -> float:
        return self.media_s / self.wall_s if self.wall_s > 0 else 0.0

    def to_dict(self) -> dict:
        labelled = max(1, self.labelled)
        return {"recordings": self.recordings, "labelled": self.labelled, "skipped": self.skipped,
                "failed": dict(sorted(self.failed.items())), "retried": self.retried, "workers": self.workers,
                "media_hours": round(self.media_s / 3600, 4), "wall_s": round(self.wall_s, 2),
                "media_hours_per_hour": round(self.media_hours_per_hour, 1),
                "startup_s": round(self.startup_s, 2), "ray_overhead_ms_per_recording":
                round(1000 * self.overhead_s / labelled, 1), "replay_ms_per_recording":
                round(1000 * self.run_s / labelled, 1)}


class BatchWorker:
    """A Ray actor: the model opened once (engines loaded), then `relabel(path)` per recording."""

    def __init__(self, cfg):
        from actstream.stream.pipeline import open_model

        from actstream.engines.bundle import load_spec

        self.cfg = cfg
        spec = load_spec(cfg.model.path)
        self.model = open_model(cfg, batched=spec.causal and cfg.replay.batch_steps > 1)
        self.done = 0

    def ready(self) -> dict:
        import ray

        return {"node": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}

    def relabel(self, path: str) -> dict:
        """The recording's messages as `replay --out` writes them, or why it could not be labelled."""
        from actstream.common.files import shown_path
        from actstream.stream.pipeline import RunOptions, check_modalities, run_pipeline
        from actstream.stream.publish import encode
        from actstream.stream.serve import make_source
        from actstream.stream.streamsfile import StreamSpec

        t0 = time.perf_counter()
        spec = self.model[0]
        chunks: list[bytes] = []
        try:
            source = make_source(StreamSpec("batch", file=path), spec, self.cfg)
            try:
                check_modalities(spec, source.has_audio_track, source.has_video_track, shown_path(path))
            except ActstreamError:
                source.close()
                raise
            opts = RunOptions(None, None, False, virtual_epoch=source.creation_time,
                              listeners=(lambda msg: chunks.append(encode(msg) + b"\n"),))
            summary = run_pipeline(self.cfg, source, opts, model=self.model)
        except Exception as exc:  # any failure is this recording's: listed with its reason, the worker goes on
            if not isinstance(exc, (ActstreamError, OSError, ValueError)):
                log.exception("relabelling %s failed", path)
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            return {"ok": False, "reason": reason, **self._facts(t0)}
        self.done += 1
        return {"ok": True, "data": b"".join(chunks), "media_s": summary.media_s, **self._facts(t0)}

    def _facts(self, t0: float) -> dict:
        import resource

        return {"run_s": time.perf_counter() - t0, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


@dataclass
class _Worker:
    actor: object
    index: int
    state: str = "starting"  # starting, idle, busy, restarting
    labelled: int = 0
    probe_at: float = 0.0
    node: str | None = None  # the Ray node it last said it runs on


class _Job:
    """The driver's loop: workers, the queue, what is in flight. progress gets one event per recording started,
    done, failed or retried: {event, name, worker, node, reason, done, total}."""

    def __init__(self, ray, cfg, todo: list[Recording], out: Path, opts: BatchOptions, summary: BatchSummary,
                 progress, stop: threading.Event, started: float):
        self.ray, self.cfg, self.out, self.opts = ray, cfg, out, opts
        self.queue: deque[tuple[Recording, int]] = deque((r, 0) for r in todo)
        self.left = len(todo)
        self.summary, self.progress, self.stop = summary, progress, stop
        self.inflight: dict = {}  # ObjectRef -> (kind, worker, recording, attempt, submitted at)
        self.workers: list[_Worker] = []
        self.started = started
        self.first_ready: float | None = None

    def _actor_class(self):
        from actstream.cluster.raynodes import worker_env

        return self.ray.remote(BatchWorker).options(num_cpus=self.opts.cpus, num_gpus=self.opts.gpus,
                                                    max_restarts=-1, max_task_retries=0, runtime_env=worker_env(),
                                                    scheduling_strategy="SPREAD")

    def _new_worker(self, index: int) -> _Worker:
        w = _Worker(self._actor_class().remote(self.cfg), index)
        self.inflight[w.actor.ready.remote()] = ("ready", w, None, 0, time.perf_counter())
        return w

    def run(self, n: int) -> None:
        self.workers = [self._new_worker(i) for i in range(n)]
        self.summary.workers = n
        try:
            while self.left and not self.stop.is_set():
                self._dispatch()
                refs = list(self.inflight)
                if not refs:  # every worker restarting: probe them
                    self.stop.wait(POLL_S)
                    continue
                done, _ = self.ray.wait(refs, num_returns=1, timeout=POLL_S)
                for ref in done:
                    self._finished(ref)
                if all(w.state == "dead" for w in self.workers):
                    raise ConfigError("every batch worker failed to start; see the log above")
        finally:
            for w in self.workers:
                self.ray.kill(w.actor, no_restart=True)

    def _dispatch(self) -> None:
        now = time.perf_counter()
        for w in self.workers:
            if w.state == "restarting" and now >= w.probe_at:
                w.state = "starting"
                self.inflight[w.actor.ready.remote()] = ("ready", w, None, 0, now)
            if w.state == "idle" and self.queue:
                rec, attempt = self.queue.popleft()
                w.state = "busy"
                self.inflight[w.actor.relabel.remote(rec.path)] = ("relabel", w, rec, attempt, now)
                self._event("start", rec, w)

    def _finished(self, ref) -> None:
        from ray.exceptions import RayActorError

        kind, w, rec, attempt, submitted = self.inflight.pop(ref)
        try:
            result = self.ray.get(ref)
        except RayActorError as exc:
            if exc.actor_init_failed:  # its constructor failed: the model cannot be opened there; not restarted
                log.error("batch worker %d cannot start: %s", w.index, str(exc).strip().splitlines()[-1])
                w.state = "dead"
                if rec is not None:
                    self.queue.append((rec, attempt))
                return
            self._lost(w, rec, attempt, exc)
            return
        if kind == "ready":
            w.state, w.node = "idle", result["node"]
            if self.first_ready is None:
                self.first_ready = time.perf_counter()
                self.summary.startup_s = self.first_ready - self.started
            return
        w.state, w.labelled = "idle", w.labelled + 1
        self.left -= 1
        self.summary.run_s += result["run_s"]
        self.summary.overhead_s += max(0.0, time.perf_counter() - submitted - result["run_s"])
        if result["ok"]:
            write_output(self.out, rec, result["data"])
            self.summary.labelled += 1
            self.summary.media_s += result["media_s"]
            self._event("done", rec, w)
        else:
            self.summary.failed[rec.name] = result["reason"]
            self._event("failed", rec, w, result["reason"])
        if w.labelled >= RECYCLE or result["rss_mb"] > MAX_RSS_MB:  # a long-running actor's leaks stay bounded
            log.info("replacing batch worker %d after %d recordings (%.0f MB)", w.index, w.labelled, result["rss_mb"])
            self.ray.kill(w.actor, no_restart=True)
            self.workers[w.index] = self._new_worker(w.index)

    def _lost(self, w: _Worker, rec: Recording | None, attempt: int, exc: Exception) -> None:
        """A worker's process or node died (or is restarting): its recording goes to the next free worker."""
        w.state, w.probe_at = "restarting", time.perf_counter() + RESTART_PROBE_S
        if rec is None:
            return
        why = str(exc).splitlines()[0][:200]
        if attempt + 1 >= MAX_ATTEMPTS:
            self.left -= 1
            self.summary.failed[rec.name] = f"the worker was lost {MAX_ATTEMPTS} times while labelling it ({why})"
            self._event("failed", rec, w, self.summary.failed[rec.name])
            return
        log.warning("batch worker %d was lost while labelling %s; it goes to another worker", w.index, rec.name)
        self.summary.retried += 1
        self.queue.appendleft((rec, attempt + 1))
        self._event("retry", rec, w, why)

    def _event(self, event: str, rec: Recording, w: _Worker, reason: str | None = None) -> None:
        if self.progress is not None:
            self.progress({"event": event, "name": rec.name, "worker": w.index, "node": w.node, "reason": reason,
                           "done": self.summary.recordings - self.summary.skipped - self.left,
                           "total": self.summary.recordings - self.summary.skipped})


def run_batch(cfg, recordings: list[Recording], out: Path, opts: BatchOptions, progress=None,
              stop: threading.Event | None = None) -> BatchSummary:
    """Label every recording not finished yet in `out` (cluster/recordings.py) with a pool of Ray actors.
    progress: callable(event dict) for each recording started, done, failed or retried (a bar, a test)."""
    from actstream.cluster.raynodes import alive_nodes, start_ray, stop_ray
    from actstream.cluster.recordings import finished, forget_unfinished

    t0 = time.perf_counter()
    summary = BatchSummary(recordings=len(recordings))
    todo = [r for r in recordings if not finished(out, r)]
    summary.skipped = len(recordings) - len(todo)
    if not todo:
        return summary
    for rec in todo:  # what a stopped run left half written is written again, whole
        forget_unfinished(out, rec)
    ray, started_here = start_ray(opts.address)
    try:
        n = opts.workers
        if not n:  # as many as the cluster's CPUs hold
            cpus = sum(node["Resources"].get("CPU", 0.0) for node in alive_nodes(ray))
            n = max(1, int(cpus // opts.cpus)) if opts.cpus else 1
        job = _Job(ray, cfg, todo, out, opts, summary, progress, stop or threading.Event(), t0)
        job.run(max(1, min(n, len(todo))))
    finally:
        stop_ray(started_here)
        summary.wall_s = time.perf_counter() - t0
    return summary
