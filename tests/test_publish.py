import json
import threading
from pathlib import Path

import jsonschema

from actstream.stream.client import subscribe
from tests.conftest import ROOT, run_cli

SCHEMA = json.loads((ROOT / "stream" / "schema.json").read_text())


def test_zeromq_end_to_end_with_a_real_subscriber(tmp_path, media, port):
    endpoint = f"tcp://127.0.0.1:{port}"
    received = []

    def listen():
        for msg in subscribe(endpoint, timeout_s=30):
            received.append(msg)
            if msg["topic"] == "status" and msg["state"] == "end":
                return

    th = threading.Thread(target=listen)
    th.start()
    out = tmp_path / "o.jsonl"
    r = run_cli("replay", str(media["mp4"]), "--publish", endpoint, "--wait-subscriber", "20", "--out", str(out))
    th.join(timeout=40)
    assert r.returncode == 0, r.stderr
    assert received, "the subscriber got nothing"
    for msg in received:
        jsonschema.validate(msg, SCHEMA)
    for topic in ("speech", "activity", "status"):
        seqs = [m["seq"] for m in received if m["topic"] == topic]
        assert seqs == list(range(len(seqs))), f"{topic}: gaps or reordering in {seqs}"
    # what went over the wire is exactly what --out recorded, in the same order
    assert received == [json.loads(line) for line in Path(out).read_text().splitlines()]


def test_listen_prints_json_lines_and_filters_topics(media, port):
    import subprocess
    import sys

    endpoint = f"tcp://127.0.0.1:{port}"
    listener = subprocess.Popen([sys.executable, "-m", "actstream.cli", "listen", endpoint, "--topic", "speech",
                                 "--count", "5"], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    r = run_cli("replay", str(media["mp4"]), "--publish", endpoint, "--wait-subscriber", "20", "--realtime")
    out, _ = listener.communicate(timeout=30)
    assert r.returncode == 0 and listener.returncode == 0
    lines = [json.loads(x) for x in out.splitlines()]
    assert [m["topic"] for m in lines] == ["speech"] * 5
    assert [m["seq"] for m in lines] == [0, 1, 2, 3, 4]
    assert all(m["label"] in ("speech", "no_speech") for m in lines)
    # on the wall clock, `wall` is when the pacer released each step: 100 ms apart
    gaps = [b["wall"] - a["wall"] for a, b in zip(lines, lines[1:])]
    assert all(0.05 < g < 0.5 for g in gaps)


def test_port_in_use_is_a_clear_error(media, port):
    import zmq

    ctx = zmq.Context()
    s = ctx.socket(zmq.PUB)
    s.bind(f"tcp://127.0.0.1:{port}")
    try:
        r = run_cli("replay", str(media["wav"]), "--publish", f"tcp://127.0.0.1:{port}")
    finally:
        s.close(0)
        ctx.term()
    assert r.returncode == 2
    assert r.stderr.startswith(f"actstream: error: cannot bind tcp://127.0.0.1:{port}: Address already in use")
    assert "Traceback" not in r.stderr
