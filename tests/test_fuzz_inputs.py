"""Fuzzing the readers of the CSV files a user hands in: training manifests (training/teach.read_dataset) and
truth files (stream/plot.read_truth), from random bytes, random CSV-ish text and mutations of good files.
Every input is either read or refused with one line (ConfigError/SourceError); nothing else escapes.

The unmarked tests run 150 inputs each; the slow-marked ones 10^5 each (`make test-slow`; set
ACTSTREAM_FUZZ_EXAMPLES to change that), like tests/test_fuzz.py."""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actstream.training.teach import read_dataset
from actstream.common.errors import ConfigError, SourceError
from actstream.views.plot import read_truth

FAST = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)
SLOW = settings(max_examples=int(os.environ.get("ACTSTREAM_FUZZ_EXAMPLES", 100_000)), deadline=None,
                suppress_health_check=list(HealthCheck), database=None)

# one folder for the whole run: the recordings a manifest may name, and the file each example rewrites
HOME = Path(tempfile.mkdtemp(prefix="fuzz-csv-"))
for _name in ("a.wav", "b.wav", "sub/c.mkv"):
    (HOME / _name).parent.mkdir(parents=True, exist_ok=True)
    (HOME / _name).write_bytes(b"RIFF....WAVE")  # read_dataset checks files exist; it does not decode them
(HOME / "empty.wav").write_bytes(b"")

MANIFEST_SEEDS = [
    b"path,label\na.wav,hum\nb.wav,hiss\n",
    b"path,label,start,end,group\na.wav,hum,0,1.5,p1\nb.wav,hiss,0.5,2,p2\nsub/c.mkv,hum,,,p3\n",
    b"\xef\xbb\xbfpath,label,group\r\na.wav,hum,x\r\n\"b.wav\",\"hiss, loud\",y\r\n",
]
TRUTH_SEEDS = [
    b"start_s,end_s,label\n0.9,2.1,speech\n5.5,6.8,knock\n",
    b"start_s,end_s,label,note\r\n0,1e1,\"quiet, mostly\",x\r\n\r\n10,12.25,speech,\n",
]
ALPHABET = list(",\"\n\r \t.-+e0123456789abcdehilmnpstuw_/\\:;\x00\xff") + ["inf", "nan", "start", "end", "label",
                                                                             "path", "group", "a.wav", "\u2028"]
TOKENS = [b",", b"\"", b"\n", b"\r\n", b"\x00", b"\xff", b"\xc3", b"nan", b"inf", b"-1", b"1e400", b"abc", b"",
          b"a.wav", b"../a.wav", b"/dev/zero", b"empty.wav", b"sub", b"x" * 5000]


@st.composite
def mutated(draw, seeds: list[bytes]) -> bytes:
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(0, 6))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "token", "dup"]))
        i = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[i] ^= draw(st.integers(1, 255))
        elif op == "cut":
            del data[i:i + draw(st.integers(1, 16))]
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=16))
        elif op == "token":
            data[i:i] = draw(st.sampled_from(TOKENS))
        elif op == "dup":
            line = bytes(data[i:i + draw(st.integers(1, 40))])
            data[i:i] = line * draw(st.integers(1, 20))
    return bytes(data)


def inputs(seeds: list[bytes]):
    text = st.lists(st.sampled_from(ALPHABET), max_size=120).map(lambda xs: "".join(xs).encode("utf-8"))
    return st.one_of(mutated(seeds), text, st.binary(max_size=300))


def one_line(exc: Exception) -> None:
    msg = str(exc)
    assert msg and "\n" not in msg and "\r" not in msg and len(msg) < 1000, msg


def check_manifest(data: bytes) -> None:
    p = HOME / "m.csv"
    p.write_bytes(data)
    try:
        items = read_dataset(p)
    except (ConfigError, SourceError) as exc:
        one_line(exc)
        return
    assert len({i.label for i in items}) >= 2
    for i in items:
        assert i.path.is_file() and i.path.stat().st_size > 0
        assert 0 < len(i.label) <= 64 and i.group
        for x in (i.start, i.end):
            assert x is None or (math.isfinite(x) and x >= 0)
        if i.start is not None and i.end is not None:
            assert i.start < i.end


def check_truth(data: bytes) -> None:
    p = HOME / "t.csv"
    p.write_bytes(data)
    try:
        segments = read_truth(p)
    except (ConfigError, SourceError) as exc:
        one_line(exc)
        return
    for a, b, label in segments:
        assert math.isfinite(a) and math.isfinite(b) and 0 <= a < b and label


@FAST
@given(data=inputs(MANIFEST_SEEDS))
def test_fuzz_manifest(data):
    check_manifest(data)


@FAST
@given(data=inputs(TRUTH_SEEDS))
def test_fuzz_truth(data):
    check_truth(data)


def test_the_seeds_themselves_read():
    """The good files the mutations start from are read (the fuzzing starts from valid input)."""
    for seed in MANIFEST_SEEDS:
        (HOME / "m.csv").write_bytes(seed)
        assert len(read_dataset(HOME / "m.csv")) >= 2
    for seed in TRUTH_SEEDS:
        (HOME / "t.csv").write_bytes(seed)
        assert len(read_truth(HOME / "t.csv")) == 2


@pytest.mark.slow
@SLOW
@given(data=inputs(MANIFEST_SEEDS))
def test_fuzz_manifest_1e5(data):
    check_manifest(data)


@pytest.mark.slow
@SLOW
@given(data=inputs(TRUTH_SEEDS))
def test_fuzz_truth_1e5(data):
    check_truth(data)
