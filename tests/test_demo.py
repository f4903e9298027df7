import re
import subprocess

from tests.conftest import ROOT, free_port


def test_readme_demo_command_runs():
    """`make demo` as the README says: it makes the sample, replays it in real time and a subscriber process
    prints labels as they arrive."""
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme
    port = free_port()
    r = subprocess.run(["make", "demo", f"DEMO_ARGS=--publish tcp://127.0.0.1:{port}"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    lines = r.stdout.splitlines()
    speech = [ln for ln in lines if re.match(r"\s+\d+\.\d+s\s+speech\s", ln)]
    activity = [ln for ln in lines if re.match(r"\s+\d+\.\d+s\s+activity\s", ln)]
    assert len(speech) >= 100 and len(activity) >= 100  # 14 s at 10 steps a second, printed by the subscriber
    assert any(" speech " in ln.split("speech", 1)[1][:14] for ln in speech)  # the synthesized speech is heard
    assert "status    end" in r.stdout
