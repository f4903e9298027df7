"""Teaching new activities end to end on tiny recordings the tests make: train, export, serve."""

import json

import numpy as np
import pytest
import torch

from actstream.engines.bundle import load_spec, load_torch_modules
from actstream.engines.onnxrt import OnnxRuntimeEngine
from actstream.training.teach import read_dataset
from actstream.views.demo import write_media
from actstream.common.errors import ConfigError
from tests.conftest import labels_of, run_cli


def sweep(n, seed):
    rng = np.random.default_rng(seed)
    bg = rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)
    for i in range(n):
        img = bg.copy()
        x = (i * 12 + seed * 7) % 160
        img[:, max(0, x - 10):x + 10] = (255, 255, 255)
        yield img


def still(n, seed):
    rng = np.random.default_rng(seed)
    bg = rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)
    for _ in range(n):
        yield bg


@pytest.fixture(scope="module")
def video_dataset(tmp_path_factory):
    d = tmp_path_factory.mktemp("videods")
    for label, gen in (("sweep", sweep), ("still", still)):
        (d / label).mkdir()
        for person in (1, 2):
            write_media(d / label / f"p{person}_{label}.mp4", gen(75, person), None)
    held = tmp_path_factory.mktemp("held")
    return d, {"sweep": write_media(held / "sweep.mp4", sweep(75, 9), None),
               "still": write_media(held / "still.mp4", still(75, 9), None)}


def tones(seconds, freq, seed):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    x = 0.3 * np.sin(2 * np.pi * freq * t) if freq else 0.3 * rng.standard_normal(len(t))
    return x.astype(np.float32)[:, None]


def test_video_model_from_two_recordings_per_class(tmp_path, video_dataset, monkeypatch):
    monkeypatch.setenv("ACTSTREAM_CACHE", str(tmp_path / "cache"))
    data, held = video_dataset
    r = run_cli("train", str(data), "--arch", "video_lstm", "--out", str(tmp_path / "m"), "--epochs", "12",
                "--looks", "2", timeout=300)
    assert r.returncode == 0, r.stderr
    card = (tmp_path / "m" / "MODEL_CARD.md").read_text()
    assert "Classes: [\"still\", \"sweep\"]" in card and "Split:" in card
    spec = load_spec(str(tmp_path / "m"))
    assert spec.arch == "video_lstm" and spec.heads == {"activity": ["still", "sweep"]} and spec.motion
    for label, f in held.items():
        out = tmp_path / f"{label}.jsonl"
        assert run_cli("replay", str(f), "--model", str(tmp_path / "m"), "--out", str(out),
                       "--publish", "none").returncode == 0
        got = [m["label"] for m in labels_of(out)][10:]  # after the first second
        assert got.count(label) / len(got) >= 0.8, (label, got)
    # embeddings were cached: a second training run reads them instead of running the CNN again
    # 4 recordings x (as recorded, mirrored, 2 other looks)
    assert len(list((tmp_path / "cache" / "embeddings").glob("*.npz"))) == 16
    assert json.loads((tmp_path / "m" / "model.json").read_text())["card"]["other_looks"] == 2
    # the exported temporal model computes what the PyTorch one does
    _, temporal = load_torch_modules(spec)
    assert spec.dims == {"video": 1280, "flow": spec.flow.dim}  # appearance and motion, fused before the LSTM
    rng = np.random.default_rng(0)
    x = {m: rng.standard_normal((1, 25, d)).astype(np.float32) for m, d in spec.dims.items()}
    h = np.zeros((1, 1, spec.hidden), np.float32)
    onnx = OnnxRuntimeEngine(tmp_path / "m" / "temporal.onnx", threads=1).run({**x, "h0": h, "c0": h})
    with torch.inference_mode():
        ref = temporal(*map(torch.from_numpy, (x["video"], x["flow"], h, h)))
    assert np.abs(onnx["activity"] - ref[0].numpy()).max() < 1e-5  # probabilities: ONNX equals PyTorch to 1e-5


def test_another_look_moves_and_relights_the_scene_as_drawn():
    """A look (training's other camera and light) scales the frame about its centre and shifts it by the
    drawn amounts, and changes each colour channel by its gain and gamma: a bright square lands where the
    geometry says, a grey patch takes the colour the curve says."""
    from actstream.training.teach import look_of, new_look

    frame = np.full((120, 160, 3), 128, np.uint8)
    frame[50:70, 100:120] = 255  # a 20 px square centred at (110, 60)
    for k in (1, 2, 3):
        look = look_of(k)
        assert look == look_of(k) and 0.7 <= look["scale"] <= 1.15  # drawn once per k, within the ranges
        out = new_look(frame, look)
        ys, xs = np.nonzero(out[..., 1] >= 250 * min(1.0, look["gain"] * look["c1"]) - 2)
        s = look["scale"]
        assert xs.mean() == pytest.approx(s * (110 - 80) + 80 + look["dx"] * 160, abs=1.5)
        assert ys.mean() == pytest.approx(s * (60 - 60) + 60 + look["dy"] * 120, abs=1.5)
        for i in range(3):  # the grey far from the square
            want = min(255.0, 255 * look["gain"] * look[f"c{i}"] * (128 / 255) ** look["gamma"])
            assert abs(float(out[5, 5, i]) - want) <= 1.0
    assert look_of(1) != look_of(2)


def test_bilstm_serves_replay_with_its_delay_and_refuses_live(tmp_path, monkeypatch):
    monkeypatch.setenv("ACTSTREAM_CACHE", str(tmp_path / "cache"))
    for label, freq in (("hum", 220.0), ("hiss", 0.0)):
        (tmp_path / "ds" / label).mkdir(parents=True)
        for p in (1, 2):
            write_media(tmp_path / "ds" / label / f"p{p}_{label}.wav", None, tones(3.0, freq, p), 16000,
                        acodec="pcm_s16le")
    r = run_cli("train", str(tmp_path / "ds"), "--arch", "bilstm", "--lookahead", "5", "--out",
                str(tmp_path / "bi"), "--epochs", "10", timeout=300)
    assert r.returncode == 0, r.stderr
    mix = np.concatenate([tones(3.0, 220.0, 7), tones(3.0, 0.0, 7)])
    f = write_media(tmp_path / "mix.wav", None, mix, 16000, acodec="pcm_s16le")
    out = tmp_path / "o.jsonl"
    assert run_cli("replay", str(f), "--model", str(tmp_path / "bi"), "--out", str(out),
                   "--publish", "none").returncode == 0
    msgs = labels_of(out)
    assert len(msgs) == 60 and all(m["delay_s"] == 0.5 for m in msgs)  # every step labelled, 5 steps late
    assert [m["t"] for m in msgs] == [round(0.1 * k, 4) for k in range(1, 61)]
    labels = [m["label"] for m in msgs]
    assert labels[12:28].count("hum") >= 14 and labels[40:].count("hiss") >= 18
    r = run_cli("live", "--model", str(tmp_path / "bi"), "--mic", "default", "--seconds", "1")
    assert r.returncode == 2 and "cannot run live" in r.stderr


def test_dataset_errors(tmp_path):
    (tmp_path / "only").mkdir()
    (tmp_path / "only" / "a.wav").write_bytes(b"x")
    with pytest.raises(ConfigError, match="need at least two classes"):
        read_dataset(tmp_path)
    bad = tmp_path / "m.csv"
    bad.write_text("file,label\nx.wav,a\n")
    with pytest.raises(ConfigError, match="lacks column"):
        read_dataset(bad)
    r = run_cli("train", str(tmp_path / "nope"), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "not a dataset folder" in r.stderr


def test_record_writes_a_timestamped_file_into_the_dataset(tmp_path, media):
    """The record verb on OpenCV's capture path (a file name opens like a camera URL)."""
    r = run_cli("record", "--label", "waving", "--seconds", "1", "--camera", str(media["video"]), "--mic", "none",
                "--dataset", str(tmp_path / "ds"))
    assert r.returncode == 0, r.stderr
    files = list((tmp_path / "ds" / "waving").glob("waving_*.mkv"))
    assert len(files) == 1 and r.stdout.strip() == str(files[0])
    import av

    with av.open(str(files[0])) as c:
        assert c.streams.video[0].codec_context.name == "h264"


def test_hybrid_model_from_recordings_with_both_tracks(tmp_path, monkeypatch):
    """Video and audio embeddings fused on one clock: the classes differ in both picture and sound."""
    monkeypatch.setenv("ACTSTREAM_CACHE", str(tmp_path / "cache"))
    for label, gen, freq in (("sweep", sweep, 220.0), ("still", still, 0.0)):
        (tmp_path / "ds" / label).mkdir(parents=True)
        for p in (1, 2):
            write_media(tmp_path / "ds" / label / f"p{p}_{label}.mp4", gen(50, p), tones(2.0, freq, p), 16000)
    r = run_cli("train", str(tmp_path / "ds"), "--arch", "hybrid", "--out", str(tmp_path / "hy"), "--epochs", "10",
                "--looks", "0", timeout=300)  # other looks: the video test above
    assert r.returncode == 0, r.stderr
    spec = load_spec(str(tmp_path / "hy"))
    assert spec.modalities == ("video", "audio") and spec.dims == {"video": 1280, "audio": 128, "flow": 402}
    f = write_media(tmp_path / "held.mp4", sweep(50, 9), tones(2.0, 220.0, 9), 16000)
    out = tmp_path / "o.jsonl"
    r = run_cli("replay", str(f), "--model", str(tmp_path / "hy"), "--out", str(out), "--publish", "none")
    assert r.returncode == 0 and "video_cnn" in r.stderr and "audio_cnn" in r.stderr
    got = [m["label"] for m in labels_of(out)][5:]
    assert got.count("sweep") / len(got) >= 0.8, got


@pytest.mark.slow
def test_default_recipe_quick_run(tmp_path):
    """The shipped model's recipe end to end on the shared data, in its small mode (about 30 s)."""
    from tests.conftest import SHARED, need_shared

    need_shared("manifests", "dcase2016_task2.csv")
    r = run_cli("train", str(SHARED), "--recipe", "default", "--quick", "--out", str(tmp_path / "d"), timeout=600)
    assert r.returncode == 0, r.stderr
    spec = load_spec(str(tmp_path / "d"))
    assert spec.heads["speech"] == ["no_speech", "speech"] and len(spec.heads["activity"]) == 12
    assert (tmp_path / "d" / "training.png").stat().st_size > 1000
