"""`actstream bench --quick`: the whole benchmark runs and reports every figure (no timing assertions)."""

import json


from tests.conftest import run_cli


def test_quick_bench_reports_every_figure(tmp_path, monkeypatch):
    monkeypatch.setenv("ACTSTREAM_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "bench.json"
    r = run_cli("bench", "--quick", "--dir", str(tmp_path / "work"), "--json", str(out), timeout=600)
    assert r.returncode == 0, r.stderr
    rep = json.loads(out.read_text())
    assert rep["input"]["frames"] == 100 and rep["input"]["size"] == "320x240"  # 4 s at 25 fps
    for k in ("replay_fp32", "replay_int8", "replay_int8_motion", "naive", "replay_audio", "live", "live_motion"):
        assert rep[k]["wall_s"] > 0 and rep[k]["peak_rss_mb"] > 0 and rep[k]["cpu_s"] > 0, k
    assert rep["replay_int8"]["stats"]["steps"] == 40 and rep["naive"]["frames"] == 100
    assert {"decode", "preprocess", "video_cnn", "audio_frontend", "audio_cnn", "lstm", "publish"} <= set(
        rep["replay_int8"]["stats"]["stage_ms"])
    motion = rep["replay_int8_motion"]["stats"]
    assert motion["steps"] == 40 and motion["stage_ms"]["flow"] > 0  # the motion stream ran at every step
    assert "fast replay INT8 with motion" in rep["table"] and "live p99 with motion" in rep["table"]
    # 3 s of paced replay: speech + activity + action at every step, all received (with motion: a copy of the
    # shipped default; without: one made with its heads)
    assert rep["live_motion"]["messages"] == rep["live"]["messages"] == 3 * 30
    assert rep["live"]["p99_ms"] >= rep["live"]["p50_ms"] > 0
    assert set(rep["calibration"]) == {"audio", "video"}
    assert "fast replay INT8" in rep["table"] and "naive loop" in rep["table"] and "live p99" in rep["table"]
    assert rep["table"] in r.stdout
