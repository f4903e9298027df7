"""Issue 10 (outputs and the inputs of train/eval/record): an output never lands on an input, outputs that
cannot be written are refused before the run, truth files and manifests are checked whole before any work,
and --annotate streams its frames (memory does not grow with the video's length).

Refusals run `actstream.cli.main` in this process (exit status and the one stderr line are what a user sees);
the runs that must work, and the memory measurement, run the real command in a child process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from actstream.training.teach import read_dataset
from actstream.cli import main
from actstream.views.demo import write_media
from actstream.common.errors import ConfigError
from actstream.views.plot import read_truth
from tests.conftest import ROOT, moving_frames, run_cli, tone_and_noise

SUMMARY = "steps, "  # in the run's summary line on stderr: present only when a run happened


def cli(capsys, *argv: str) -> tuple[int, str]:
    """(exit status, stderr) of the real CLI entry point run in this process."""
    capsys.readouterr()
    rc = main(list(argv))
    return rc, capsys.readouterr().err


def refused(capsys, *argv: str, match: str) -> str:
    rc, err = cli(capsys, *argv)
    lines = [x for x in err.splitlines() if x.strip()]
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("actstream: error: "), err
    assert match in lines[0], err
    assert SUMMARY not in err  # refused before the run
    return lines[0]


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("clip")
    return write_media(d / "same.mp4", moving_frames(25), tone_and_noise(1.0, 16000, 1), 16000)


# --- case 3: an output that is an input, or another output -------------------------------------------------

def test_out_onto_the_replayed_file_is_refused_and_the_file_kept(tmp_path, clip, capsys):
    f = tmp_path / "same.mp4"
    shutil.copy(clip, f)
    before = f.read_bytes()
    refused(capsys, "replay", str(f), "--out", str(f), "--publish", "none", match="same file as the replayed file")
    (tmp_path / "link.jsonl").symlink_to(f)
    os.link(f, tmp_path / "hard.jsonl")
    refused(capsys, "replay", str(f), "--out", str(tmp_path / "link.jsonl"), "--publish", "none",
            match="same file as the replayed file")
    refused(capsys, "replay", str(f), "--stats", str(tmp_path / "hard.jsonl"), "--publish", "none",
            match="same file as the replayed file")
    (tmp_path / "sub").mkdir()
    refused(capsys, "replay", str(f), "--annotate", str(tmp_path / "sub" / ".." / "same.mp4"), "--publish", "none",
            match="same file as the replayed file")
    assert f.read_bytes() == before


def test_outputs_onto_other_inputs_or_each_other_are_refused(tmp_path, clip, capsys):
    truth = tmp_path / "t.csv"
    truth.write_text("start_s,end_s,label\n0.1,0.5,speech\n")
    cfg = tmp_path / "c.toml"
    cfg.write_text("[step]\nstep_ms = 100\n")
    audio = write_media(tmp_path / "a.wav", None, tone_and_noise(1.0, 16000, 1), 16000, acodec="pcm_s16le")
    model = tmp_path / "model"
    shutil.copytree(ROOT / "engines" / "weights" / "default", model)
    saved = {p: p.read_bytes() for p in (truth, cfg, audio, model / "model.json")}
    refused(capsys, "replay", str(clip), "--plot", str(tmp_path / "p.png"), "--truth", str(truth), "--stats",
            str(truth), "--publish", "none", match="--stats")
    refused(capsys, "replay", str(clip), "--config", str(cfg), "--out", str(cfg), "--publish", "none",
            match="same file as --config")
    refused(capsys, "replay", str(clip), "--audio", str(audio), "--out", str(audio), "--publish", "none",
            match="same file as --audio")
    refused(capsys, "replay", str(clip), "--model", str(model), "--out", str(model / "model.json"), "--publish",
            "none", match="a file of the model folder")
    refused(capsys, "replay", str(clip), "--out", str(tmp_path / "x.json"), "--stats", str(tmp_path / "x.json"),
            "--publish", "none", match="give each output its own path")
    assert {p: p.read_bytes() for p in saved} == saved


# --- case 9: outputs that cannot be written, known before the run -------------------------------------------

def test_unwritable_outputs_are_refused_before_the_run(tmp_path, clip, capsys):
    missing = tmp_path / "no" / "such"
    for flag, name in (("--plot", "p.png"), ("--annotate", "a.mp4"), ("--stats", "s.json"), ("--out", "o.jsonl")):
        refused(capsys, "replay", str(clip), flag, str(missing / name), "--publish", "none", match="does not exist")
        refused(capsys, "replay", str(clip), flag, str(tmp_path), "--publish", "none", match="is a folder")
    for flag in ("--plot", "--annotate", "--stats", "--out"):
        refused(capsys, "replay", str(clip), flag, "/dev/full", "--publish", "none", match="/dev/full")
    refused(capsys, "replay", str(clip), "--stats", "/dev/null", "--publish", "none", match="not a regular file")
    refused(capsys, "replay", str(clip), "--plot", str(tmp_path / "p.txt"), "--publish", "none",
            match="unknown picture format")
    refused(capsys, "live", "--mic", "default", "--seconds", "1", "--out", str(missing / "o.jsonl"),
            match="does not exist")


def test_out_to_stdout_and_a_fifo_still_works(tmp_path, clip):
    r = run_cli("replay", str(clip), "--publish", "none", "--out", "/dev/stdout")
    assert r.returncode == 0, r.stderr
    msgs = [json.loads(line) for line in r.stdout.splitlines()]
    assert msgs and msgs[-1]["topic"] == "status" and msgs[-1]["state"] == "end"
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    reader = subprocess.Popen(["cat", str(fifo)], stdout=subprocess.PIPE, text=True)
    r = run_cli("replay", str(clip), "--publish", "none", "--out", str(fifo))
    got = reader.communicate(timeout=60)[0]
    assert r.returncode == 0, r.stderr
    assert [json.loads(line)["seq"] for line in got.splitlines()] == [m["seq"] for m in msgs]


# --- case 9: the truth file, checked whole before the run --------------------------------------------------

@pytest.mark.parametrize("text, match", [
    ("start_s,end_s,label\n0.1,abc,speech\n", "end_s 'abc' is not a number"),
    ("start_s,end_s,label\n2,1,speech\n", "line 2: start_s 2 is not before end_s 1"),
    ("start_s,end_s,label\n0,inf,speech\n", "out of range"),
    ("start_s,end_s,label\n0,nan,speech\n", "out of range"),
    ("start_s,end_s,label\n0,1\n", "line 2: 2 field(s), the header has 3"),
    ("start,end,label\n0,1,speech\n", "lacks column(s) end_s, start_s"),
    ("", "is empty"),
    (b"start_s,end_s,label\n0,1,sp\xe9ech\n", "line 2: not UTF-8"),
    ("start_s,end_s,label\n" + "0,1,x\n" * 100_001, "more than 100000 rows"),
], ids=["not-a-number", "start-after-end", "inf", "nan", "short-row", "no-columns", "empty", "not-utf8", "rows"])
def test_bad_truth_files_are_one_line_before_the_run(tmp_path, clip, capsys, text, match):
    truth = tmp_path / "t.csv"
    truth.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ConfigError, match=match.replace("(", r"\(").replace(")", r"\)")):
        read_truth(truth)
    if "abc" in match:  # and through the command: refused before the run, not after it
        refused(capsys, "replay", str(clip), "--plot", str(tmp_path / "p.png"), "--truth", str(truth), "--publish",
                "none", match=f"truth file {truth} line 2")


def test_truth_from_a_device_or_fifo_is_refused_without_reading(tmp_path):
    with pytest.raises(ConfigError, match="not a regular file"):
        read_truth("/dev/zero")
    os.mkfifo(tmp_path / "f")
    with pytest.raises(ConfigError, match="not a regular file"):
        read_truth(tmp_path / "f")  # no writer: a plain open() would wait forever
    big = tmp_path / "big.csv"
    with big.open("wb") as fh:
        fh.truncate(5 * 1024 * 1024)
    with pytest.raises(ConfigError, match="more than the 4194304 bytes allowed"):
        read_truth(big)
    good = tmp_path / "g.csv"
    good.write_text("\ufeffstart_s,end_s,label\n\n0.9,2.1,speech\n3,4,knock\n")
    assert read_truth(good) == [(0.9, 2.1, "speech"), (3.0, 4.0, "knock")]


# --- case 4: --annotate streams ------------------------------------------------------------------------------

PEAK = """
import resource, sys
from actstream.views.overlay import annotate
seconds = float(sys.argv[1])
msgs = [{"topic": "activity", "label": "a", "score": 0.9, "scores": {"a": 0.9, "b": 0.1}, "t": round(0.1 * k, 4)}
        for k in range(1, int(seconds * 10) + 1)]
n = annotate(sys.argv[2], msgs, sys.argv[3])
print(n, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def test_annotate_memory_does_not_grow_with_the_length(tmp_path):
    """Peak RSS of annotating 2 s and 8 s of 160x120 video (940x480 overlaid frames, 1.35 MB each): keeping the
    frames would add 6 s x 25 x 1.35 MB = 203 MB; streaming adds next to nothing."""
    peaks = {}
    for seconds in (2, 8):
        src = write_media(tmp_path / f"v{seconds}.mp4", moving_frames(25 * seconds), tone_and_noise(seconds, 48000, 2),
                          48000)
        out = tmp_path / f"a{seconds}.mp4"
        r = subprocess.run([sys.executable, "-c", PEAK, str(seconds), str(src), str(out)], capture_output=True,
                           text=True, cwd=ROOT, timeout=120)
        assert r.returncode == 0, r.stderr
        n, peak_kb = map(int, r.stdout.split())
        assert n == 25 * seconds
        peaks[seconds] = peak_kb / 1024
        import av

        with av.open(str(out)) as c:
            assert sum(1 for _ in c.decode(c.streams.video[0])) == 25 * seconds
            assert c.streams.audio[0].rate == 48000
            assert abs(float(c.duration / 1e6) - seconds) < 0.2
    assert peaks[8] - peaks[2] < 30, peaks  # MB


# --- case 9: train, eval and record arguments --------------------------------------------------------------

@pytest.fixture
def recordings(tmp_path) -> Path:
    for label in ("hum", "hiss"):
        (tmp_path / "ds" / label).mkdir(parents=True)
        write_media(tmp_path / "ds" / label / f"p1_{label}.wav", None, tone_and_noise(0.5, 16000, 1), 16000,
                    acodec="pcm_s16le")
    return tmp_path / "ds"


@pytest.mark.parametrize("body, match", [
    (b"path,label\nhum/p1_hum.wav,hum\nhiss/p1_hiss.wav,h\xffiss\n", "line 3: not UTF-8 text (byte 0xff"),
    (b"path,label,start\nhum/p1_hum.wav,hum,abc\nhiss/p1_hiss.wav,hiss,\n", "line 2: start 'abc' is not a number"),
    (b"path,label,start,end\nhum/p1_hum.wav,hum\nhiss/p1_hiss.wav,hiss,0,1\n", "line 2: 2 field(s), the header has 4"),
    (b"path,label\nhum/p1_hum.wav,hum\nhiss/gone.wav,hiss\n", "line 3: file"),
    (b"path,label\nhum/p1_hum.wav,hum\nhiss,hiss\n", "is not a regular file"),
    (b"path,label\nhum/p1_hum.wav,hum\nhiss/p1_hiss.wav,\n", "line 3: label is empty"),
    (b"path,label\nhum/p1_hum.wav,hum\nhiss/p1_hiss.wav," + b"x" * 65 + b"\n", "expected at most 64"),
    (b"path,label,start,end\nhum/p1_hum.wav,hum,2,1\nhiss/p1_hiss.wav,hiss,,\n", "start 2 is not before end 1"),
    (b"path,label,colour\nhum/p1_hum.wav,hum,red\n", "unknown column 'colour'"),
], ids=["not-utf8", "start-abc", "short-row", "missing-file", "folder", "empty-label", "long-label",
        "start-after-end", "unknown-column"])
def test_bad_manifests_are_one_line_naming_file_and_row(recordings, capsys, body, match):
    manifest = recordings / "m.csv"
    manifest.write_bytes(body)
    with pytest.raises(ConfigError, match=match.replace("(", r"\(").replace(")", r"\)")) as exc:
        read_dataset(manifest)
    assert str(manifest) in str(exc.value) and "\n" not in str(exc.value)
    line = refused(capsys, "train", str(manifest), "--out", str(recordings.parent / "model"), "--arch", "audio_lstm",
                   match=str(manifest))
    assert not (recordings.parent / "model").exists(), line


def test_train_checks_out_and_epochs_before_training(recordings, capsys, tmp_path):
    (tmp_path / "afile").write_text("x")
    refused(capsys, "train", str(recordings), "--arch", "audio_lstm", "--out", str(tmp_path / "afile" / "m"),
            match="which is a file")
    refused(capsys, "train", str(recordings), "--arch", "audio_lstm", "--out", str(tmp_path / "m"), "--epochs", "0",
            match="--epochs 0 out of range")
    refused(capsys, "train", str(recordings), "--arch", "audio_lstm", "--out", str(recordings / "hum"),
            match="holds the recording")
    refused(capsys, "train", str(recordings), "--arch", "audio_lstm", "--out", str(recordings), match="dataset folder")
    refused(capsys, "train", str(recordings), "--out", str(tmp_path / "m"), "--looks", "-1",
            match="--looks -1: expected 0 to 32 other looks per recording")
    refused(capsys, "train", str(recordings), "--arch", "video_lstm", "--out", str(tmp_path / "m"),
            match="has no video, but --arch video_lstm needs video")
    refused(capsys, "train", str(recordings), "--arch", "audio_lstm", "--out",
            str(ROOT / "engines" / "weights" / "default"), match="folder of --base")
    assert not (tmp_path / "m").exists()


def test_eval_checks_its_arguments_at_the_edge(tmp_path, capsys):
    refused(capsys, "eval", "default", str(tmp_path / "nope"), "--out", str(tmp_path / "e"),
            match="data folder")
    (tmp_path / "data" / "manifests").mkdir(parents=True)
    for name in ("librispeech_test_other", "fsdd", "dcase2016_task2"):
        (tmp_path / "data" / "manifests" / f"{name}.csv").write_text("path,label,subject_or_fold\n")
    refused(capsys, "eval", "default", str(tmp_path / "data"), "--timelines", "0", "--out", str(tmp_path / "e"),
            match="--timelines 0 out of range")
    refused(capsys, "eval", "default", str(tmp_path / "data"), "--seconds", "-5", "--out", str(tmp_path / "e"),
            match="--seconds -5.0 out of range")
    refused(capsys, "eval", "default", str(tmp_path / "data"), "--seconds", "nan", "--out", str(tmp_path / "e"),
            match="out of range")
    assert not (tmp_path / "e").exists()


def test_record_refuses_before_making_any_folder(tmp_path, capsys):
    ds = tmp_path / "ds"
    line = refused(capsys, "record", "--label", "x" * 300, "--dataset", str(ds), "--camera", "none", "--mic",
                   "default", match="300 characters")
    assert len(line) < 300
    refused(capsys, "record", "--label", "a/b", "--dataset", str(ds), match="not a usable class name")
    refused(capsys, "record", "--label", "waving", "--dataset", str(ds), "--camera", "none", "--mic", "none",
            match="nothing to record")
    (tmp_path / "afile").write_text("x")
    refused(capsys, "record", "--label", "waving", "--dataset", str(tmp_path / "afile"), "--camera", "none",
            "--mic", "default", match="is a file")
    assert not ds.exists() and (tmp_path / "afile").read_text() == "x"


def test_record_leaves_no_folder_when_the_device_fails(tmp_path, capsys):
    ds = tmp_path / "ds"
    rc, err = cli(capsys, "record", "--label", "waving", "--dataset", str(ds), "--camera",
                  str(tmp_path / "no-such-camera.mp4"), "--mic", "none", "--seconds", "1")
    assert rc == 2 and err.startswith("actstream: error: "), err
    assert not ds.exists()
