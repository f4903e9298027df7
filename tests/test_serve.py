"""Many streams in one process (`actstream serve`, stream/scheduler.py): the same labels as one stream at a
time, each stream's topics and state apart, streams added and removed while it runs, faults kept to the
stream they befall."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import zmq

from actstream.engines.bundle import load_spec, open_engines
from actstream.stream.config import Config
from actstream.stream.policy import LabelPolicy
from actstream.stream.publish import Channel, Publisher
from actstream.stream.recognizer import recognizer_for
from actstream.stream.scheduler import Scheduler
from actstream.stream.sources import FileSource
from actstream.stream.streams import Stream
from tests.conftest import ROOT, free_port, moving_frames, run_cli, tone_and_noise
from tests.livekit import MjpegServer

PER_STREAM = ("stream", "head", "phase", "sat_out", "problem")


def _fast_many(model: str, files: dict[str, Path], batch_steps: int) -> dict[str, list[dict]]:
    """The files as streams of one scheduler on the virtual clock: per stream id, its messages."""
    spec = load_spec(model)
    engines = open_engines(spec, "onnxruntime", spin=False, precision=Config().model.precision)  # as replay runs
    engines.load()
    policy = LabelPolicy(recognizer_for(spec, engines, spec.step_ms), Config().policy)
    publisher = Publisher(None, None, "many", spec.tag)
    got: list[dict] = []
    publisher.listeners.append(got.append)
    scheduler = Scheduler(policy, publisher, spec.step_ms, False, batch_steps=batch_steps)
    try:
        for sid, path in files.items():
            src = FileSource(path, sample_rate=spec.audio.sample_rate, window_samples=spec.audio.window_samples)
            scheduler.add(Stream(sid, policy.new_state(), Channel(publisher, sid, src.name), src))
        scheduler.run()
    finally:
        publisher.close()
        engines.close()
    return {sid: [json.loads(json.dumps(m)) for m in got if m.get("stream") == sid] for sid in files}


def _as_single(msg: dict) -> dict:
    """A many-stream message as the single-stream replay of the same file writes it: the bare topic."""
    out = {k: v for k, v in msg.items() if k not in PER_STREAM}
    out["topic"] = msg["head"]
    return out


@pytest.mark.parametrize("batch_steps", [1, 32])
def test_many_streams_in_fast_replay_give_each_file_its_own_replay_byte_for_byte(tmp_path, media, batch_steps):
    """Four recordings of every kind through one scheduler (their encoders and LSTM rows batched together)
    give, per stream, exactly what `actstream replay --out` gives for that file alone."""
    files = {"av": media["mp4"], "mkv": media["mkv"], "silent": media["video"], "wav": media["wav"]}
    config = tmp_path / "c.toml"
    config.write_text(f"[replay]\nbatch_steps = {batch_steps}\n")
    many = _fast_many("default", files, batch_steps)
    for sid, path in files.items():
        out = tmp_path / f"{sid}.jsonl"
        r = run_cli("replay", str(path), "--publish", "none", "--out", str(out), "--config", str(config))
        assert r.returncode == 0, r.stderr
        single = [json.loads(x) for x in out.read_text().splitlines()]
        assert [_as_single(m) for m in many[sid]] == single, sid
        assert {m["topic"] for m in many[sid]} >= {f"status/{sid}/"}


def _serve(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "actstream.cli", "serve", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


class Sub:
    """A real SUB socket on its own thread, collecting [topic, payload] for the given prefixes."""

    def __init__(self, endpoint: str, prefixes: list[str]):
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.SUB)
        for p in prefixes:
            self.sock.setsockopt(zmq.SUBSCRIBE, p.encode())
        self.sock.connect(endpoint)
        self.msgs: list[tuple[str, dict]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.sock.poll(100):
                topic, payload = self.sock.recv_multipart()
                self.msgs.append((topic.decode(), json.loads(payload)))

    def wait_for(self, cond, timeout_s: float, what: str) -> tuple[str, dict]:
        deadline = time.monotonic() + timeout_s
        seen = 0
        while time.monotonic() < deadline:
            for item in self.msgs[seen:]:
                if cond(*item):
                    return item
            seen = len(self.msgs)
            time.sleep(0.02)
        raise AssertionError(f"no {what} within {timeout_s} s; got {len(self.msgs)} messages")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close(0)
        self.ctx.term()


@pytest.fixture(scope="module")
def av(tmp_path_factory) -> dict[str, Path]:
    """Recordings for the served streams: 3 s of picture and sound, and a copy cut short of its end."""
    from actstream.views.demo import write_media

    d = tmp_path_factory.mktemp("serve_media")
    full = write_media(d / "a.mp4", moving_frames(75), tone_and_noise(3.0, 16000, 1), 16000)
    data = full.read_bytes()
    cut = d / "cut.mp4"
    cut.write_bytes(data[: len(data) * 2 // 3])  # a recording whose end was never written
    return {"full": full, "cut": cut}


def test_a_subscriber_to_cam1_gets_nothing_of_cam10_and_a_head_of_every_stream_by_its_prefix(av, port):
    import jsonschema

    from actstream.stream.client import subscribe

    endpoint = f"tcp://127.0.0.1:{port}"
    one, every, everything = Sub(endpoint, ["speech/cam1/"]), Sub(endpoint, ["speech/"]), Sub(endpoint, [""])
    proc = _serve("--stream", f"cam1=file:{av['full']},loop", "--stream", f"cam10=file:{av['full']},loop",
                  "--publish", endpoint, "--control", "none")
    try:
        every.wait_for(lambda t, m: t == "speech/cam10/" and m["seq"] >= 20, 60, "cam10's speech")
        one.wait_for(lambda t, m: m["seq"] >= 20, 30, "cam1's speech")
        # the clients' stream filter: listen --stream, and subscribe(streams=...) with and without heads
        listened = run_cli("listen", endpoint, "--stream", "cam1", "--count", "40", "--timeout", "20")
        python = subscribe(endpoint, topics=["speech", "status"], streams=["cam1"], timeout_s=20)
        got = [next(python) for _ in range(15)]
        python.close()
        everything.wait_for(lambda t, m: t == "status" and m["ticks"] > 0, 30, "the process status")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        for sub in (one, every, everything):
            sub.close()
    assert proc.returncode == 0, err
    assert listened.returncode == 0, listened.stderr
    assert {json.loads(line)["stream"] for line in listened.stdout.splitlines()} == {"cam1"}
    assert {m["topic"] for m in got} <= {"speech/cam1/", "status/cam1/"} and len(got) == 15
    assert {t for t, _ in one.msgs} == {"speech/cam1/"}
    assert {t for t, _ in every.msgs} == {"speech/cam1/", "speech/cam10/"}
    schema = json.loads((ROOT / "stream" / "schema.json").read_text())
    for _, m in everything.msgs:  # labels, each stream's status and the process's: all of them the contract's
        jsonschema.validate(m, schema)
    assert {t for t, _ in everything.msgs} >= {"status", "status/cam1/", "action/cam10/", "activity/cam1/"}
    assert all(m["stream"] == t.split("/")[1] and m["head"] == "speech" for t, m in every.msgs)
    for sid in ("cam1", "cam10"):  # each stream's seq runs on without a gap (a late joiner's welcome repeats one)
        seqs = _no_repeats([m["seq"] for t, m in every.msgs if m["stream"] == sid])
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))


def _no_repeats(seqs: list[int]) -> list[int]:
    """A topic's seq numbers without the repeats a late joiner's welcome sends to everyone (as clients drop)."""
    out: list[int] = []
    for q in seqs:
        if not out or q > out[-1]:
            out.append(q)
    return out


def _request(endpoint: str, req) -> dict:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    sock.send(req if isinstance(req, bytes) else json.dumps(req).encode())
    try:
        assert sock.poll(10000), "no answer from the control endpoint"
        return json.loads(sock.recv())
    finally:
        sock.close(0)
        ctx.term()


def test_streams_are_added_removed_and_refused_while_the_process_runs(av, port):
    endpoint, control = f"tcp://127.0.0.1:{port}", f"tcp://127.0.0.1:{free_port()}"
    sub = Sub(endpoint, [""])
    proc = _serve("--stream", f"a=file:{av['full']},loop", "--publish", endpoint, "--control", control)
    try:
        sub.wait_for(lambda t, m: t == "activity/a/" and m["seq"] >= 5, 60, "stream a's labels")
        r = run_cli("streams", "add", f"b=file:{av['full']},loop", "--control", control)
        assert r.returncode == 0 and "add b: ok" in r.stdout, r.stderr
        sub.wait_for(lambda t, m: t == "activity/b/" and m["seq"] >= 5, 30, "the added stream's labels")
        # refusals change nothing: a duplicate id, an unknown id, a bad source, garbage, an unknown op
        assert "exists already" in run_cli("streams", "add", f"b=file:{av['full']}", "--control", control).stderr
        assert "no stream 'zz'" in run_cli("streams", "remove", "zz", "--control", control).stderr
        assert not _request(control, {"op": "add", "stream": {"id": "c", "file": "/nonexistent.mp4"}})["ok"]
        assert not _request(control, b"\xff not json")["ok"]
        assert not _request(control, {"op": "explode"})["ok"]
        assert not _request(control, {"op": "add", "stream": {"id": "bad id!", "camera": "0"}})["ok"]
        # a camera that cannot be opened is that stream's problem, retried with back-off, and can be removed
        dead = f"http://127.0.0.1:{free_port()}/camera.mjpg"
        assert _request(control, {"op": "add", "stream": {"id": "dead", "camera": dead}})["ok"]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            listed = _request(control, {"op": "list"})["streams"]
            if any(x["id"] == "dead" and x["phase"] == "retrying" and x["problem"] for x in listed):
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"the dead camera never showed as retrying: {listed}")
        assert _request(control, {"op": "remove", "id": "dead"})["ok"]
        listed = json.loads("[" + ",".join(run_cli("streams", "list", "--control", control).stdout.split()) + "]")
        assert sorted(s["id"] for s in listed) == ["a", "b"]
        r = run_cli("streams", "remove", "a", "--control", control)
        assert r.returncode == 0, r.stderr
        _, end = sub.wait_for(lambda t, m: t == "status/a/" and m["state"] == "end", 30, "a's end status")
        seen_b = len([1 for t, _ in sub.msgs if t == "activity/b/"])
        sub.wait_for(lambda t, m: t == "activity/b/" and m["seq"] >= seen_b + 10, 30, "b going on without a")
        _, status = sub.wait_for(lambda t, m: t == "status" and list(m["streams"]) == ["b"], 30,
                                 "a process status without a")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        sub.close()
    assert proc.returncode == 0, err
    assert end["phase"] == "ended"
    assert {"ticks", "late_ticks", "skipped_ticks", "batch"} <= set(status)
    b = _no_repeats([m["seq"] for t, m in sub.msgs if t == "activity/b/"])
    assert b == list(range(b[0], b[0] + len(b)))  # the removal cost b nothing


def test_faults_stay_with_their_stream(av, port):
    """A camera that stalls and then vanishes, and a recording cut short: each fault shows in that stream's
    status; the stream beside them keeps every step."""
    endpoint = f"tcp://127.0.0.1:{port}"
    sub = Sub(endpoint, [""])
    with MjpegServer() as cam:
        proc = _serve("--stream", f"cam={cam.url}", "--stream", f"cut=file:{av['cut']}",
                      "--stream", f"ok=file:{av['full']},loop", "--publish", endpoint, "--control", "none")
        try:
            _, cut_end = sub.wait_for(lambda t, m: t == "status/cut/" and m["state"] in ("end", "error"), 60,
                                      "the cut recording's end")
            sub.wait_for(lambda t, m: t == "action/cam/" and m["seq"] >= 10, 60, "the camera's labels")
            cam.stalled.set()
            sub.wait_for(lambda t, m: t == "status/cam/" and m["devices"]["camera"]["state"] != "ok", 30,
                         "the camera's status saying it stalled")
            cam.stalled.clear()
            cam.gone.set()
            sub.wait_for(lambda t, m: t == "status/cam/" and m["devices"]["camera"]["state"] in ("lost", "reconnecting")
                         and m["devices"]["camera"]["reconnects"] >= 1, 30, "the camera's status saying it is gone")
            n = len([1 for t, _ in sub.msgs if t == "activity/ok/"])
            sub.wait_for(lambda t, m: t == "activity/ok/" and m["seq"] >= n + 10, 30, "the other stream going on")
        finally:
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=30)
            sub.close()
    assert proc.returncode == 0, err
    ok = _no_repeats([m["seq"] for t, m in sub.msgs if t == "activity/ok/"])
    assert ok == list(range(ok[0], ok[0] + len(ok)))
    assert cut_end["steps"] < 30  # it ended where the recording broke off


def test_a_streams_file_is_checked_whole_before_anything_starts(tmp_path, av):
    def serve_file(text: str) -> subprocess.CompletedProcess:
        f = tmp_path / "streams.toml"
        f.write_text(text)
        return run_cli("serve", str(f), "--control", "none", "--publish", "none", timeout=60)

    good = f'[[stream]]\nid = "a"\nfile = "{av["full"]}"\n'
    cases = {
        good + good: "appears twice",
        good + '[[stream]]\nid = "b c"\ncamera = "0"\n': "id = 'b c' is invalid",
        good + '[[stream]]\nid = "b"\ncamra = "0"\n': "unknown key 'camra'",
        good + '[[stream]]\nid = "b"\nfile = "missing.mp4"\n': "missing.mp4 not found",
        good + '[[stream]]\nid = "b"\n': "no input",
        good + '[[stream]]\nid = "b"\nfile = "' + str(av["full"]) + '"\ncamera = "0"\n': "not both",
        "streams = 3\n": "unknown key 'streams'",
        "[[stream]\n": "not valid TOML",
    }
    for text, expected in cases.items():
        r = serve_file(text)
        assert r.returncode == 2 and expected in r.stderr, (text, r.stderr)
        assert r.stderr.count("\n") == 1
