"""Beyond one machine (cluster/): several Ray nodes on this machine (ray.cluster_utils.Cluster, every node on
127.0.0.1), a node killed the way a machine dies. What a user checks: every recording labelled once, byte for
byte as its own `actstream replay --out`; every live stream back within 10 s with the restart in its first
message; a late subscriber of the forwarder gets every stream's current labels at once; nothing of the
cluster listens beyond the loopback."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from actstream.cluster.raynodes import listeners_beyond_loopback
from actstream.views.demo import write_media
from tests.conftest import ROOT, free_port, need_shared, run_cli, tone_and_noise
from tests.raykit import LoopbackCluster
from tests.test_serve import Sub


@pytest.fixture(scope="module")
def ray_cluster():
    cluster = LoopbackCluster()
    yield cluster
    cluster.close()


def _recordings(tmp_path: Path) -> dict[str, Path]:
    """A few of the shared test recordings (linked, never copied), a long generated one (the one a node dies
    under) and a broken one, in one folder."""
    data = need_shared()
    folder = tmp_path / "data"
    shared = {"weizmann/lena_jack.avi": "video/weizmann/jack/lena_jack.avi",
              "weizmann/ira_wave2.avi": "video/weizmann/wave2/ira_wave2.avi",
              "dcase/knock032.wav": "audio/dcase2016_task2/knock/knock032.wav",
              "dcase/cough033.wav": "audio/dcase2016_task2/cough/cough033.wav",
              "librispeech/1688-142285-0000.wav": "audio/librispeech_test_other/speech/1688-142285-0000.wav"}
    out = {}
    for name, rel in shared.items():
        src = data / rel
        if not src.exists():
            pytest.skip(f"{src} not present")
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).symlink_to(src)
        out[name] = folder / name
    out["long.wav"] = write_media(folder / "long.wav", None, tone_and_noise(240.0, 16000), 16000, acodec="pcm_s16le")
    (folder / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40)
    out["broken.mp4"] = folder / "broken.mp4"
    return out


def test_a_batch_job_with_a_node_killed_labels_every_recording_once_as_its_replay(ray_cluster, tmp_path):
    from actstream.cluster.batch import BatchOptions, run_batch
    from actstream.cluster.recordings import find_recordings
    from actstream.stream.config import Config

    files = _recordings(tmp_path)
    nodes = ray_cluster.add_nodes(2)  # the head holds no worker: three nodes, two of them labelling
    out = tmp_path / "out"
    events: list[dict] = []
    long_started = threading.Event()

    def progress(ev: dict) -> None:
        events.append(ev)
        if ev["event"] == "start" and ev["name"] == "long.jsonl":
            long_started.set()

    result: dict = {}
    job = threading.Thread(target=lambda: result.update(summary=run_batch(
        Config(), find_recordings(tmp_path / "data"), out, BatchOptions(workers=2), progress)))
    try:
        job.start()
        assert long_started.wait(120), f"the long recording never started: {events}"
        assert listeners_beyond_loopback(ray_cluster.pids()) == []
        victim = next(e["node"] for e in events if e["event"] == "start" and e["name"] == "long.jsonl")
        ray_cluster.kill(ray_cluster.node(victim))  # mid-recording: it takes seconds to label
        job.join(180)
        assert not job.is_alive(), "the job did not finish"
    finally:
        ray_cluster.remove_all()
    summary = result["summary"]
    assert summary.failed.keys() == {"broken.jsonl"} and "not a readable media file" in summary.failed["broken.jsonl"]
    assert summary.labelled == len(files) - 1 and summary.retried >= 1
    retried = [e["name"] for e in events if e["event"] == "retry"]
    assert "long.jsonl" in retried
    done = [e["name"] for e in events if e["event"] == "done"]
    assert sorted(done) == sorted(set(done))  # each written once
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == sorted(done)  # no .part left behind, nothing else
    for name, path in files.items():
        if name == "broken.mp4":
            continue
        replayed = tmp_path / "replay.jsonl"
        r = run_cli("replay", str(path), "--publish", "none", "--out", str(replayed))
        assert r.returncode == 0, r.stderr
        output = out / (str(Path(name).with_suffix("")) + ".jsonl")
        assert output.read_bytes() == replayed.read_bytes(), name
    assert nodes  # two nodes were there; the job ended on one
    print(f"batch with a node killed: {json.dumps(summary.to_dict())}")


def _stream_files(tmp_path: Path, n: int) -> list[Path]:
    return [write_media(tmp_path / f"s{i}.wav", None, tone_and_noise(2.0 + i * 0.1, 16000, seed=i), 16000,
                        acodec="pcm_s16le") for i in range(n)]


def test_live_streams_over_three_nodes_come_back_after_a_node_dies_and_a_late_joiner_sees_them_all(
        ray_cluster, tmp_path, audio_model):
    from actstream.cluster.serve import ClusterOptions, ClusterServer
    from actstream.stream.config import Config

    files = _stream_files(tmp_path, 9)
    ids = [f"cam{i}" for i in range(8)]
    ray_cluster.add_nodes(3)
    endpoint, control = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    cfg = Config().override("model", path=str(audio_model))
    stop = threading.Event()
    server = ClusterServer(cfg, ClusterOptions(endpoint, f"tcp://127.0.0.1:{free_port()}", control, shards=3), stop)
    sub = Sub(endpoint, [""])
    runner = threading.Thread(target=server.run)
    try:
        for sid, path in zip(ids, files):
            server.add({"id": sid, "file": str(path), "loop": True})
        runner.start()
        for sid in ids:
            sub.wait_for(lambda t, m, sid=sid: t == f"speech/{sid}/" and m["seq"] >= 5, 60, f"{sid}'s labels")
        assert listeners_beyond_loopback(ray_cluster.pids()) == []
        placed = {row["id"]: row for row in server.list()}
        assert {row["shard"] for row in placed.values()} == {"shard0", "shard1", "shard2"}
        victim = next(s for s in server.shards if any(r["shard"] == s.name for r in placed.values()))
        moved = sorted(sid for sid, row in placed.items() if row["shard"] == victim.name)
        died = ray_cluster.kill(ray_cluster.node(victim.answer["node"]))
        back = {}
        for sid in moved:  # the first message of the new epoch says so, then its labels come again
            _, first = sub.wait_for(lambda t, m, sid=sid: m.get("stream") == sid and m.get("epoch") == 1, 30,
                                    f"{sid} started again")
            assert first["topic"] == f"status/{sid}/" and first["restarted"] is True and first["seq"] == 0, first
            sub.wait_for(lambda t, m, sid=sid: t == f"speech/{sid}/" and m.get("epoch") == 1, 30, f"{sid}'s labels")
            back[sid] = time.monotonic() - died
        print(f"streams back after the node died (s): {json.dumps({k: round(v, 2) for k, v in back.items()})}")
        assert max(back.values()) < 10, back
        n = len(sub.msgs)
        for sid in ids:  # every stream goes on: those of the nodes left never stopped
            sub.wait_for(lambda t, m, sid=sid: t == f"speech/{sid}/", 10, f"{sid} after the restart")
        kept = [m for t, m in sub.msgs[:n] if m.get("stream") in set(ids) - set(moved)]
        assert {m.get("epoch") for m in kept} == {0}

        late = Sub(endpoint, ["speech/", "status/"])  # a subscriber joining now: every stream's state at once
        try:
            late.wait_for(lambda t, m: {tt for tt, _ in late.msgs} >= {f"speech/{s}/" for s in ids}, 2,
                          "every stream's current speech label")
            epochs = {m["stream"]: m["epoch"] for t, m in late.msgs if t.startswith("speech/")}
            assert epochs == {sid: 1 if sid in moved else 0 for sid in ids}
        finally:
            late.close()

        listed = [json.loads(x) for x in run_cli("streams", "list", "--control", control).stdout.splitlines()]
        assert sorted(r["id"] for r in listed) == ids
        assert all(r["shard"] != victim.name and r["epoch"] == (1 if r["id"] in moved else 0) for r in listed)
        r = run_cli("streams", "add", f"cam8=file:{files[8]},loop", "--control", control)
        assert r.returncode == 0, r.stderr
        sub.wait_for(lambda t, m: t == "speech/cam8/" and m["seq"] >= 3, 30, "the added stream's labels")
        r = run_cli("streams", "remove", "cam0", "--control", control)
        assert r.returncode == 0, r.stderr
        sub.wait_for(lambda t, m: t == "status/cam0/" and m["state"] == "end", 30, "cam0's end")
        _, status = sub.wait_for(lambda t, m: t == "status" and "cam0" not in m["streams"]
                                 and "cam8" in m["streams"], 10, "the cluster status without cam0")
        assert status["shards"][victim.name]["answers"] is False
        import jsonschema

        contract = jsonschema.Draft202012Validator(json.loads((ROOT / "stream" / "schema.json").read_text()))
        for _, m in sub.msgs:  # every message through the forwarder is the contract's
            contract.validate(m)
    finally:
        stop.set()
        runner.join(30)
        sub.close()
        server.close()
        ray_cluster.remove_all()


@pytest.mark.slow
def test_serve_cluster_on_a_local_ray_started_by_the_command(tmp_path):
    """`actstream serve --cluster` as a user runs it: a local Ray inside the command, the forwarder, the control
    endpoint; SIGTERM stops it cleanly."""
    import signal
    import subprocess
    import sys

    files = _stream_files(tmp_path, 2)
    endpoint, control = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    proc = subprocess.Popen([sys.executable, "-m", "actstream.cli", "serve", "--cluster", "--stream",
                             f"a=file:{files[0]},loop", "--publish", endpoint, "--control", control, "--inbound",
                             f"tcp://127.0.0.1:{free_port()}"], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    sub = Sub(endpoint, [""])
    try:
        sub.wait_for(lambda t, m: t == "speech/a/" and m["seq"] >= 5, 120, "a's labels")
        r = run_cli("streams", "add", f"b=file:{files[1]},loop", "--control", control)
        assert r.returncode == 0, r.stderr
        sub.wait_for(lambda t, m: t == "speech/b/" and m["seq"] >= 5, 60, "b's labels")
        _, status = sub.wait_for(lambda t, m: t == "status" and set(m["streams"]) == {"a", "b"}, 10, "the status")
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        sub.close()
    assert proc.returncode == 0, err
    assert list(status["shards"]) == ["shard0"] and status["forwarder"]["passed"] > 0
