"""`actstream batch` as a user runs it on a fresh machine: no Ray to start by hand (a local one in the command,
on 127.0.0.1), outputs named after the recordings, the same bytes as `replay --out`, a broken recording listed
and the rest labelled, a second run that does only what is left; and bad input refused before any work."""

from __future__ import annotations

import json
from pathlib import Path

from actstream.cluster.recordings import output_names
from actstream.engines.bundle import load_spec
from tests.conftest import moving_frames, run_cli, tone_and_noise
from actstream.views.demo import write_media


def _replayed(path: Path, tmp_path: Path) -> bytes:
    out = tmp_path / "replayed.jsonl"
    r = run_cli("replay", str(path), "--publish", "none", "--out", str(out))
    assert r.returncode == 0, r.stderr
    return out.read_bytes()


def test_batch_starts_its_own_ray_labels_as_replay_does_and_a_second_run_does_what_is_left(tmp_path):
    data = tmp_path / "archive"
    (data / "day2").mkdir(parents=True)
    wav = write_media(data / "door.wav", None, tone_and_noise(2.0, 16000), 16000, acodec="pcm_s16le")
    mp4 = write_media(data / "door.mp4", moving_frames(40), tone_and_noise(1.6, 16000, seed=1), 16000)
    flac = write_media(data / "day2" / "hall.flac", None, tone_and_noise(1.5, 8000, seed=2), 8000, acodec="flac")
    (data / "day2" / "broken.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt junk")
    (data / "notes.txt").write_text("not a recording")
    out = tmp_path / "labels"
    r = run_cli("batch", str(data), "--out", str(out), "--workers", "2", timeout=300)
    assert r.returncode == 1, r.stderr  # a recording failed: listed, the others labelled
    lines = r.stdout.splitlines()
    assert lines[0].startswith("actstream batch: 4 recording(s): 3 labelled, 0 skipped (finished before), 1 failed")
    assert lines[1].startswith("failed: day2/broken.jsonl: ") and len(lines) == 2
    # door.wav and door.mp4 would both be door.jsonl: each keeps its extension
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "batch.json", "day2/hall.jsonl", "door.mp4.jsonl", "door.wav.jsonl"]
    for path, name in ((wav, "door.wav.jsonl"), (mp4, "door.mp4.jsonl"), (flac, "day2/hall.jsonl")):
        assert (out / name).read_bytes() == _replayed(path, tmp_path), name
    record = json.loads((out / "batch.json").read_text())
    assert record["settings"]["model"] == load_spec("default").tag and record["summary"]["labelled"] == 3

    # a run that stopped half way: one output missing, its half-written part left behind
    expected = (out / "day2" / "hall.jsonl").read_bytes()
    (out / "day2" / "hall.jsonl").unlink()
    (out / "day2" / "hall.jsonl.4242.part").write_bytes(expected[:100])
    r = run_cli("batch", str(data), "--out", str(out), timeout=300)
    assert r.stdout.startswith("actstream batch: 4 recording(s): 1 labelled, 2 skipped (finished before), 1 failed")
    assert (out / "day2" / "hall.jsonl").read_bytes() == expected
    assert not list(out.rglob("*.part"))


def test_names_that_would_collide_keep_their_extensions():
    assert output_names(["a.mp4", "a.wav", "b.wav", "x/a.wav", "a.mp4.wav"]) == [
        "a.mp4.jsonl", "a.wav.jsonl", "b.jsonl", "x/a.jsonl", "a.mp4.wav.jsonl"]


def test_bad_input_is_one_line_before_any_work(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    wav = write_media(data / "a.wav", None, tone_and_noise(1.0, 16000), 16000, acodec="pcm_s16le")
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\na.wav,x\nmissing.wav,y\n")
    (tmp_path / "file").write_text("")
    (tmp_path / "empty").mkdir()
    done = tmp_path / "done"
    done.mkdir()
    (done / "batch.json").write_text(json.dumps({"settings": {"model": "other@1"}, "summary": {}}))
    cases = {
        ("batch", str(tmp_path / "nope"), "--out", str(tmp_path / "o")): "not a folder of recordings",
        ("batch", str(tmp_path / "empty"), "--out", str(tmp_path / "o")): "holds no recordings",
        ("batch", str(manifest), "--root", str(data), "--out", str(tmp_path / "o")): "line 3",
        ("batch", str(data), "--out", str(tmp_path / "file")): "is a file",
        ("batch", str(data), "--out", str(tmp_path / "o"), "--workers", "-1"): "--workers -1",
        ("batch", str(data), "--out", str(tmp_path / "o"), "--address", "not an address"): "not a Ray address",
        ("batch", str(data), "--out", str(done)): "other settings (model",
        ("serve", "--stream", f"a={wav}", "--address", "auto"): "goes with --cluster",
        ("serve", "--cluster", "--stream", f"a={wav}", "--out", str(tmp_path / "x.jsonl")): "--out is one process",
    }
    for args, expected in cases.items():
        r = run_cli(*args)
        assert r.returncode == 2 and expected in r.stderr and r.stderr.count("\n") == 1, (args, r.stderr)
    assert not (tmp_path / "o").exists()
