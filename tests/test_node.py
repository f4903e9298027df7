"""The wire contract outside Python: a Node.js subscriber (npm `zeromq`) receives a live stream and validates
every message against stream/schema.json with ajv."""

import json
import shutil
import signal
import subprocess
import sys

import pytest

from tests.conftest import ROOT, run_cli

NODE_DIR = ROOT / "examples" / "node"


@pytest.fixture(scope="module")
def node_ready():
    if not shutil.which("node") or not shutil.which("npm"):
        pytest.skip("node and npm are not installed")
    if not (NODE_DIR / "node_modules" / "zeromq").is_dir():
        r = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]


def test_node_subscriber_validates_a_live_stream(node_ready, media, port):
    endpoint = f"tcp://127.0.0.1:{port}"
    node = subprocess.Popen(["node", "subscriber.js", endpoint, "--until-end"], cwd=NODE_DIR,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    r = run_cli("replay", str(media["mp4"]), "--publish", endpoint, "--wait-subscriber", "30", "--realtime")
    out, err = node.communicate(timeout=60)
    assert r.returncode == 0, r.stderr
    assert node.returncode == 0, err
    msgs = [json.loads(line) for line in out.splitlines()]
    assert err == ""  # no invalid message, no sequence gap
    topics = [m["topic"] for m in msgs]
    # the default model on an A/V file: its audio heads and its visual head, every step, each validated by Node
    assert topics.count("speech") == topics.count("activity") == topics.count("action") == 30
    assert msgs[-1]["topic"] == "status" and msgs[-1]["state"] == "end"
    assert [m["seq"] for m in msgs if m["topic"] == "speech"] == list(range(30))


def test_node_subscriber_takes_one_stream_of_a_serve_process(node_ready, media, port):
    """The stream filter outside Python: a served stream's messages (HEAD/ID/ topics, `stream` and `head`
    fields) validate against the schema, and --stream c1 never gets c10's."""
    endpoint = f"tcp://127.0.0.1:{port}"
    serve = subprocess.Popen([sys.executable, "-m", "actstream.cli", "serve", "--publish", endpoint, "--control", "none",
                              "--stream", f"c1=file:{media['mp4']},loop", "--stream", f"c10=file:{media['mp4']},loop"],
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        node = subprocess.run(["node", "subscriber.js", endpoint, "--stream", "c1", "--count", "40"], cwd=NODE_DIR,
                              capture_output=True, text=True, timeout=120)
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.communicate(timeout=30)
    assert node.returncode == 0, node.stderr
    msgs = [json.loads(line) for line in node.stdout.splitlines()]
    assert len(msgs) == 40 and {m["stream"] for m in msgs} == {"c1"}
    assert {m["topic"] for m in msgs} <= {"speech/c1/", "activity/c1/", "action/c1/", "status/c1/"}
