"""The TensorRT backend's engine cache and self-healing, tested where TensorRT cannot run (no GPU here):
the cache keys, the engine file checks, the background rebuild and the fallback to ONNX Runtime."""

import logging
import time

import numpy as np
import pytest

from actstream.engines.bundle import load_spec, open_engines
from actstream.engines.onnxrt import OnnxRuntimeEngine
from actstream.engines.tensorrt import (EngineFileError, GpuInfo, SelfHealingEngine, engine_key, engine_path, profile_shapes, read_engine_file, write_engine_file)
from tests.conftest import run_cli

H100 = GpuInfo("NVIDIA H100 80GB HBM3", (9, 0))
SHAPES = {"image": ((1, 3, 224, 224), (16, 3, 224, 224), (64, 3, 224, 224))}


def _key(**change):
    parts = {"onnx_digest": "abc123", "trt_version": "10.3.0", "gpu": H100, "precision": "fp16", "shapes": SHAPES}
    parts.update(change)
    return engine_key(**parts)


def test_engine_key_changes_when_any_part_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("ACTSTREAM_CACHE", str(tmp_path))
    base = _key()
    variants = [_key(onnx_digest="abc124"), _key(trt_version="10.4.0"),
                _key(gpu=GpuInfo("NVIDIA L4", (9, 0))), _key(gpu=GpuInfo(H100.name, (8, 9))),
                _key(precision="int8"),
                _key(shapes={"image": ((1, 3, 224, 224), (16, 3, 224, 224), (32, 3, 224, 224))})]
    paths = {engine_path("enc.onnx", k) for k in [base, *variants]}
    assert len(paths) == 1 + len(variants)  # every change gives another file
    assert engine_path("enc.onnx", _key()) == engine_path("enc.onnx", base)  # and the same parts the same file
    assert engine_path("enc.onnx", base).parent == tmp_path / "tensorrt"
    with pytest.raises(Exception, match="precision 'fp8' unknown"):
        _key(precision="fp8")


def test_profile_shapes_make_the_batch_dynamic():
    spec = load_spec("default")
    shapes = profile_shapes(spec.folder / "audio_encoder.onnx")
    assert shapes == {"logmel": ((1, 96, 64), (16, 96, 64), (64, 96, 64))}
    temporal = profile_shapes(spec.folder / "temporal.onnx")
    # the LSTM's layer count stays fixed; its streams (N, one state row each) range up to a batch
    assert temporal["h0"] == ((1, 1, spec.hidden), (1, 16, spec.hidden), (1, 64, spec.hidden))
    assert temporal["audio"][2] == (64, 64, spec.audio_dim)  # streams N and steps T both range up to a batch


def test_engine_file_checks_reject_corrupt_truncated_and_stale(tmp_path):
    key, payload = _key(), bytes(range(256)) * 10
    path = tmp_path / "e.engine"
    write_engine_file(path, key, payload)
    assert read_engine_file(path, key) == payload
    with pytest.raises(EngineFileError, match="stale"):
        read_engine_file(path, _key(trt_version="10.5.0"))
    data = path.read_bytes()
    path.write_bytes(data[:-7])
    with pytest.raises(EngineFileError, match="checksum"):
        read_engine_file(path, key)
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    with pytest.raises(EngineFileError, match="checksum"):
        read_engine_file(path, key)
    path.write_bytes(b"garbage")
    with pytest.raises(EngineFileError, match="bad magic"):
        read_engine_file(path, key)
    with pytest.raises(EngineFileError, match="not built yet"):
        read_engine_file(tmp_path / "missing.engine", key)


class FileBackedEngine:
    """Stands in for TensorRTEngine where TensorRT cannot run: its "engine" is an engine-cache file in the
    real format whose payload names an ONNX file, run by ONNX Runtime. build() writes the file (slowly, as a
    TensorRT build is slow); load() checks it with the same read_engine_file as TensorRTEngine."""

    def __init__(self, onnx, path, key, build_s=0.3):
        self.onnx, self.path, self.key, self.build_s = onnx, path, key, build_s
        self.builds = 0
        self._inner = None

    def build(self):
        time.sleep(self.build_s)
        write_engine_file(self.path, self.key, str(self.onnx).encode())
        self.builds += 1

    def load(self):
        onnx = read_engine_file(self.path, self.key).decode()
        self._inner = OnnxRuntimeEngine(onnx, threads=1, name="compiled")
        self._inner.load()

    def run(self, feeds):
        return self._inner.run(feeds)

    def close(self):
        pass


def test_corrupt_engine_is_rebuilt_in_the_background_while_onnxruntime_serves(tmp_path, caplog):
    onnx = load_spec("default").folder / "audio_encoder.onnx"
    path = tmp_path / "audio.engine"
    path.write_bytes(b"ACTSTRT1\x05\x00\x00\x00{bad json")  # a corrupt engine left by a crash
    primary = FileBackedEngine(onnx, path, _key())
    eng = SelfHealingEngine(primary, OnnxRuntimeEngine(onnx, threads=1))
    x = {"logmel": np.random.default_rng(0).standard_normal((2, 96, 64)).astype(np.float32) - 8}
    with caplog.at_level(logging.WARNING, logger="actstream.engines.tensorrt"):
        eng.load()
        first = eng.run(x)["embedding"]  # served at once, by ONNX Runtime, while the build runs
    assert eng.backend == "onnxruntime"
    assert "corrupt" in caplog.text and "ONNX Runtime serves" in caplog.text
    assert eng.wait_built(10.0) and primary.builds == 1
    second = eng.run(x)["embedding"]
    assert eng.backend == "tensorrt"  # switched over after the rebuild, between two runs
    np.testing.assert_allclose(first, second, atol=1e-5)
    assert read_engine_file(path, _key()) == str(onnx).encode()  # the rebuilt file is valid
    eng.close()


def test_failed_rebuild_and_failing_engine_never_stop_the_stream(tmp_path, caplog):
    onnx = load_spec("default").folder / "audio_encoder.onnx"

    class Broken(FileBackedEngine):
        def build(self):
            raise RuntimeError("out of GPU memory")

    eng = SelfHealingEngine(Broken(onnx, tmp_path / "none.engine", _key()), OnnxRuntimeEngine(onnx, threads=1))
    x = {"logmel": np.zeros((1, 96, 64), np.float32)}
    with caplog.at_level(logging.WARNING, logger="actstream.engines.tensorrt"):
        eng.load()
        assert not eng.wait_built(10.0)
        assert eng.run(x)["embedding"].shape == (1, load_spec("default").audio_dim)
    assert "out of GPU memory" in eng.build_error and "staying on ONNX Runtime" in caplog.text


def test_tensorrt_backend_without_tensorrt_falls_back_with_a_warning(tmp_path, caplog, monkeypatch):
    pytest.importorskip("onnxruntime")
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed here: the fallback is not what runs")
    except ImportError:
        pass
    monkeypatch.setenv("ACTSTREAM_CACHE", str(tmp_path))
    spec = load_spec("default")
    trt = open_engines(spec, "tensorrt", threads=1)
    ort = open_engines(spec, "onnxruntime", threads=1, precision="fp32")
    with caplog.at_level(logging.WARNING, logger="actstream.engines.tensorrt"):
        trt.load()
    ort.load()
    assert "TensorRT is not installed" in caplog.text and "pip install actstream[gpu]" in caplog.text
    x = {"logmel": np.random.default_rng(1).standard_normal((3, 96, 64)).astype(np.float32) - 8}
    np.testing.assert_array_equal(trt.encoders["audio"].run(x)["embedding"], ort.encoders["audio"].run(x)["embedding"])
    assert trt.encoders["audio"].backend == "onnxruntime"
    trt.close()
    ort.close()


def test_build_command_says_tensorrt_is_missing():
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed here")
    except ImportError:
        pass
    r = run_cli("build")
    assert r.returncode == 2
    assert r.stderr.startswith("actstream: error: TensorRT is not installed") and "pip install actstream[gpu]" in r.stderr


def test_build_progress_is_a_callback_and_engines_draw_nothing():
    from pathlib import Path

    from actstream import engines
    from actstream.engines.trt_build import _Phases

    seen = []
    phases = _Phases(seen.append)
    phases.update("Building engine", 0, 2)
    phases.update("Building engine", 2, 2)  # a phase's last step always reaches the callback
    assert seen == [0.0, 1.0]
    files = list(Path(engines.__file__).parent.glob("*.py"))
    assert len(files) > 10
    src = "".join(p.read_text() for p in files)
    assert "tqdm" not in src and "sys.stderr" not in src  # the caller draws the bar (actstream build)
