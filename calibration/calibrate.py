"""`actstream calibrate`: gather, quantize, gate, measure; the result is written into the model folder.

Files written (model folder, or --out): `<encoder>_encoder.int8.onnx` (QDQ), `<encoder>_encoder.ranges.json`
(ONNX Runtime's tensor ranges), `<encoder>_encoder.trt.cache` (TensorRT calibration cache) and `int8.json`:
per encoder the gate's measurements and decision, the FP32 source's digest, and the measured speed-up.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np

from actstream.engines.bundle import Engines, load_spec
from actstream.engines.cache import file_digest, video_encoder_onnx
from actstream.engines.onnxrt import OnnxRuntimeEngine
from actstream.engines.precision import GATE_FILE
from actstream.stream.policy import LabelPolicy
from actstream.stream.recognizer import CausalRecognizer
from actstream.common.errors import SourceError

from actstream.calibration.gate import Margin, cosine, decide
from actstream.calibration.gather import Recording, media_files, replay_inputs, split
from actstream.calibration.quantize import quantize_encoder, tensorrt_calibration_cache

log = logging.getLogger(__name__)

INPUT = {"audio": "logmel", "video": "image"}


def _fp32_path(spec, encoder: str) -> Path:
    return spec.folder / "audio_encoder.onnx" if encoder == "audio" else video_encoder_onnx(spec.video.size)


def _inputs(rec: Recording, encoder: str) -> np.ndarray:
    return rec.mels if encoder == "audio" else rec.images


def _embed(engine: OnnxRuntimeEngine, encoder: str, x: np.ndarray, batch: int = 32) -> np.ndarray:
    return np.concatenate([engine.run({INPUT[encoder]: x[i:i + batch]})["embedding"]
                           for i in range(0, len(x), batch)])


def _labels(spec, temporal, embs: dict[str, np.ndarray], ts: list[float], policy_cfg) -> dict[str, list[str]]:
    """The labels the step loop would show for these embeddings (LSTM state and policy carried through)."""
    rec = CausalRecognizer(spec, Engines({}, temporal))
    policy = LabelPolicy(rec, policy_cfg)
    out: dict[str, list[str]] = {h: [] for h in spec.heads}
    for _, labels in policy.label(rec.advance_embeddings(embs, ts)):
        for h in spec.heads:
            out[h].append(labels[h].label)
    return out


def _truth(path: Path) -> list[tuple[float, float, str]] | None:
    """The truth of a recording, from `<stem>.truth.csv` beside it (start_s,end_s,label), if any."""
    csv = path.with_suffix(".truth.csv")
    if not csv.is_file():
        return None
    spans = []
    for line in csv.read_text().splitlines()[1:]:
        a, b, label = line.split(",")[:3]
        spans.append((float(a), float(b), label.strip()))
    return spans


def _accuracy(labels: dict[str, list[str]], ts: list[float], spans, heads: dict[str, list[str]]) -> dict[str, tuple[int, int]]:
    """Per head: (steps whose label equals the truth, steps whose truth is one of the head's classes)."""
    out = {}
    for h, classes in heads.items():
        hit = n = 0
        for t, lab in zip(ts, labels[h]):
            truth = next((k for a, b, k in spans if a <= t < b), None)
            if truth in classes:
                n += 1
                hit += lab == truth
        if n:
            out[h] = (hit, n)
    return out


def _speed(fp32: OnnxRuntimeEngine, int8: OnnxRuntimeEngine, name: str, x: np.ndarray, seconds: float) -> dict:
    """ms per item for FP32 and INT8 at batch 1 (live) and batch 32 (batched replay): the median of runs
    alternating between the two, so load from other processes falls on both alike. A timing, not a test."""
    out = {}
    for batch in (1, 32):
        xb = np.ascontiguousarray(np.resize(x, (batch, *x.shape[1:])))
        runs: dict[str, list[float]] = {"fp32": [], "int8": []}
        for eng in (fp32, int8):  # warm-up: first runs allocate
            eng.run({name: xb})
        start = time.perf_counter()
        while time.perf_counter() - start < 2 * seconds or len(runs["fp32"]) < 5:
            for tag, eng in (("fp32", fp32), ("int8", int8)):
                t0 = time.perf_counter()
                eng.run({name: xb})
                runs[tag].append(time.perf_counter() - t0)
        for tag in runs:
            out[f"{tag}_ms_batch{batch}"] = round(float(np.median(runs[tag])) * 1000.0 / batch, 4)
        out[f"speedup_batch{batch}"] = round(out[f"fp32_ms_batch{batch}"] / out[f"int8_ms_batch{batch}"], 3)
    return out


def calibrate(model: str, data: list[str], out: str | None = None, margin: Margin = Margin(), threads: int = 0,
              max_calib: int = 256, max_held_steps: int = 600, timing_s: float = 1.0, policy_cfg=None,
              max_files: int = 48) -> dict:
    """Calibrate every encoder of `model` on recordings under `data`; returns the record written to int8.json.

    max_calib: encoder inputs to calibrate on (spread over the calibration files); max_held_steps: steps
    replayed per recording (the first minute at 100 ms steps); max_files: recordings used at most, sampled
    evenly from the sorted list."""
    from actstream.stream.config import PolicyConfig

    policy_cfg = policy_cfg or PolicyConfig()
    spec = load_spec(model)
    folder = Path(out) if out else spec.folder
    if folder.resolve() != spec.folder.resolve():
        shutil.copytree(spec.folder, folder, dirs_exist_ok=True)
        spec = load_spec(str(folder))
    files = media_files(data, need_video="video" in spec.modalities)
    if not files:
        raise SourceError(f"no recordings with {' and '.join(spec.modalities)} under {', '.join(data)}: "
                          f"pass media files or folders to --data")
    if len(files) > max_files:  # a large dataset folder: an even sample of it is representative enough
        files = files[::-(-len(files) // max_files)]
    calib_files, held_files = split(files)
    log.info("calibrating %s on %d recordings, gating on %d held out", spec.name, len(calib_files), len(held_files))
    same = calib_files == held_files  # a single recording: its first half calibrates, its second half gates
    calib_recs, held_recs = [], []
    steps_per_file = max(1, max_calib // len(calib_files))
    for f in calib_files:
        rec = replay_inputs(f, spec, max_steps=max_held_steps)
        n = len(rec.ts) // 2 if same else len(rec.ts)
        stride = max(1, n // steps_per_file)
        calib_recs.append({m: _inputs(rec, m)[:n:stride] for m in spec.modalities})
        if same:
            held_recs.append(rec.tail(n))
    if not same:
        held_recs = [replay_inputs(f, spec, max_steps=max_held_steps) for f in held_files]
    temporal = OnnxRuntimeEngine(spec.folder / "temporal.onnx", threads, name="temporal")
    fp32_engines = {m: OnnxRuntimeEngine(_fp32_path(spec, m), threads, name=f"{m}_encoder") for m in spec.modalities}
    fp32_embs = [{**{m: _embed(fp32_engines[m], m, _inputs(r, m)) for m in spec.modalities},
                  **({"flow": r.flow} if r.flow is not None else {})} for r in held_recs]
    fp32_labels = [_labels(spec, temporal, e, r.ts, policy_cfg) for e, r in zip(fp32_embs, held_recs)]
    record = {"format": 1, "model": spec.tag, "folder": str(folder), "margin": margin.to_dict(), "calibration_files": [str(f) for f in calib_files],
              "held_out_files": [str(f) for f in held_files], "held_out_steps": sum(len(r.ts) for r in held_recs),
              "threads": threads or os.cpu_count(), "encoders": {}}
    for m in spec.modalities:
        fp32 = _fp32_path(spec, m)
        int8_path = folder / f"{m}_encoder.int8.onnx"
        ranges = folder / f"{m}_encoder.ranges.json"
        x = np.concatenate([c[m] for c in calib_recs])
        t0 = time.perf_counter()
        quantize_encoder(fp32, int8_path, INPUT[m], x, ranges)
        tensorrt_calibration_cache(ranges, folder / f"{m}_encoder.trt.cache")
        log.info("quantized the %s encoder on %d inputs in %.1f s", m, len(x), time.perf_counter() - t0)
        int8 = OnnxRuntimeEngine(int8_path, threads, name=f"{m}_encoder_int8")
        cos, agree, hits = [], {h: [] for h in spec.heads}, {}
        for r, e32, lab32 in zip(held_recs, fp32_embs, fp32_labels):
            e8 = _embed(int8, m, _inputs(r, m))
            cos.append(cosine(e32[m], e8))
            lab8 = _labels(spec, temporal, {**e32, m: e8}, r.ts, policy_cfg)
            for h in spec.heads:
                agree[h] += [a == b for a, b in zip(lab32[h], lab8[h])]
            spans = _truth(r.path)
            if spans:
                for tag, labs in (("fp32", lab32), ("int8", lab8)):
                    for h, (hit, n) in _accuracy(labs, r.ts, spans, spec.heads).items():
                        acc = hits.setdefault(f"{h}_accuracy", {"fp32": [0, 0], "int8": [0, 0]})[tag]
                        acc[0] += hit
                        acc[1] += n
        cos_all = np.concatenate(cos) if cos else np.ones(1)
        measured = {"cosine_mean": float(cos_all.mean()), "cosine_min": float(cos_all.min()),
                    "label_agreement": {h: float(np.mean(v)) if v else 1.0 for h, v in agree.items()},
                    "metrics": {k: {t: v[t][0] / v[t][1] for t in v} for k, v in hits.items()}}
        passed, reason = decide(measured, margin)
        speed = _speed(fp32_engines[m], int8, INPUT[m], x[:32], timing_s)
        record["encoders"][m] = {"file": int8_path.name, "source": file_digest(fp32), "passed": passed,
                                 "reason": reason, **measured, "speed": speed, "calibration_inputs": len(x)}
        log.info("%s encoder INT8: %s (%s); speed-up x%.2f at batch 1, x%.2f at batch 32", m,
                 "passed" if passed else "REFUSED", reason, speed["speedup_batch1"], speed["speedup_batch32"])
        int8.close()
    (folder / GATE_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return record
