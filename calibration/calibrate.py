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
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from actstream.engines.bundle import Engines, load_spec
from actstream.engines.cache import file_digest, video_encoder_onnx
from actstream.engines.onnxrt import OnnxRuntimeEngine
from actstream.engines.precision import GATE_FILE, read_gate
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


def _labels(spec, temporal, embs: dict[str, np.ndarray], ts: list[float], policy_cfg,
            heads: list[str]) -> dict[str, list[str | None]]:
    """The labels the step loop would show for these embeddings (LSTM state and policy carried through; a
    stream whose embeddings are not given is missing, as in a replay of a file without it), for `heads`."""
    rec = CausalRecognizer(spec, Engines({}, temporal))
    policy = LabelPolicy(rec, policy_cfg)
    out: dict[str, list[str | None]] = {h: [] for h in heads}
    for _, labels in policy.label(rec.advance_embeddings(embs, ts)):
        for h in heads:
            out[h].append(labels[h].label if h in labels else None)
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


def _accuracy(labels: dict[str, list], ts: list[float], spans, heads: dict[str, list[str]]) -> dict[str, tuple[int, int]]:
    """Per head: (steps whose label equals the truth, steps whose truth is one of the head's classes)."""
    out = {}
    for h, classes in heads.items():
        if h not in labels:
            continue
        hit = n = 0
        for t, lab in zip(ts, labels[h]):
            truth = next((k for a, b, k in spans if a <= t < b), None)
            if truth in classes:
                n += 1
                hit += lab == truth
        if n:
            out[h] = (hit, n)
    return out


def encoder_speed(fp32: OnnxRuntimeEngine, int8: OnnxRuntimeEngine, name: str, x: np.ndarray, seconds: float) -> dict:
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


def _choose(files: list[Path], max_files: int) -> list[Path]:
    """At most max_files of files, sampled evenly from the sorted list."""
    return files[::-(-len(files) // max_files)] if len(files) > max_files else files


def _calibration_inputs(files: list[Path], spec, encoder: str, max_calib: int) -> np.ndarray:
    """About max_calib inputs of `encoder`, the same number from each recording, spread evenly over each
    (recordings without that stream are skipped, with a note)."""
    per = max(1, max_calib // len(files))
    out = []
    for f in files:
        try:
            x = _inputs(replay_inputs(f, spec, modalities=(encoder,)), encoder)
        except SourceError as e:
            log.info("not calibrating the %s encoder on %s", encoder, e)
            continue
        out.append(x[np.linspace(0, len(x) - 1, min(per, len(x))).astype(int)])
    if not out:
        raise SourceError(f"no recordings with {encoder} among the {len(files)} calibration recordings: pass some "
                          f"to --data")
    return np.concatenate(out)


def calibrate(model: str, data: list[str], out: str | None = None, margin: Margin = Margin(), threads: int = 0,
              max_calib: int = 512, max_held_steps: int = 600, timing_s: float = 1.0, policy_cfg=None,
              max_files: int = 48, encoders: list[str] | None = None,
              held_out: list[tuple[Path, list] | Path] | None = None) -> dict:
    """Calibrate the encoders of `model` (`encoders`, default all) on recordings under `data`; returns the
    record written to int8.json (an earlier record's other encoders are kept).

    Each encoder is calibrated on the recordings that have its stream (a hybrid's video encoder on videos
    without sound too) and gated on held-out recordings: `held_out` (paths, or (path, truth spans
    [(start_s, end_s, label)])), else every fourth recording. The gate compares, for the heads the encoder
    feeds, the labels the step loop shows with the INT8 encoder and with FP32, and their accuracy against the
    truth where there is one (`<stem>.truth.csv` beside a recording, or the spans given). max_calib: encoder
    inputs to calibrate on, spread evenly over the calibration recordings; max_held_steps: steps replayed per
    held-out recording (the first minute at 100 ms steps); max_files: recordings used at most, sampled evenly
    from the sorted list."""
    from actstream.stream.config import PolicyConfig

    policy_cfg = policy_cfg or PolicyConfig()
    spec = load_spec(model)
    folder = Path(out) if out else spec.folder
    if folder.resolve() != spec.folder.resolve():
        shutil.copytree(spec.folder, folder, dirs_exist_ok=True)
        spec = load_spec(str(folder))
    encoders = list(encoders or spec.modalities)
    for m in encoders:
        if m not in spec.modalities:
            raise SourceError(f"model {spec.name} has no {m} encoder: it has {', '.join(spec.modalities)}")
    files = media_files(data, need_video=encoders == ["video"])
    if not files:
        raise SourceError(f"no recordings with {' or '.join(encoders)} under {', '.join(data)}: "
                          f"pass media files or folders to --data")
    files = _choose(files, max_files)
    if held_out is None:
        calib_files, held_paths = split(files)
        held = [(p, _truth(p)) for p in held_paths]
    else:
        calib_files = files
        held = [(p, None) if isinstance(p, (str, Path)) else (p[0], p[1]) for p in held_out]
        held = [(Path(p), spans if spans is not None else _truth(Path(p))) for p, spans in held]
    same = held_out is None and calib_files == [p for p, _ in held]  # one recording: its first half calibrates
    log.info("calibrating %s (%s) on %d recordings, gating on %d held out", spec.name, ", ".join(encoders),
             len(calib_files), len(held))
    recs = [(r, spans) for r, spans in ((_held_replay(p, spec, max_held_steps), spans) for p, spans in held)
            if r is not None]
    calib_rec = None
    if same and recs:  # a single recording: its first half calibrates, its second half gates
        calib_rec = recs[0][0]
        recs = [(calib_rec.tail(len(calib_rec.ts) // 2), recs[0][1])]
    temporal = OnnxRuntimeEngine(spec.folder / "temporal.onnx", threads, name="temporal")
    fp32s = {k: OnnxRuntimeEngine(_fp32_path(spec, k), threads, name=f"{k}_encoder") for k in spec.modalities}
    previous = read_gate(folder) if (folder / GATE_FILE).exists() else {}
    record = {"format": 1, "model": spec.tag, "folder": os.path.relpath(folder), "margin": margin.to_dict(),
              "calibration_files": [os.path.relpath(f) for f in calib_files],
              "held_out_files": [os.path.relpath(p) for p, _ in held],
              "threads": threads or os.cpu_count(),
              "encoders": {m: e for m, e in previous.get("encoders", {}).items() if m not in encoders}}
    try:
        # each held-out recording's FP32 embeddings and labels, once: every encoder's INT8 run is compared to them
        gated = []
        for r, spans in recs:
            e32 = {**{k: _embed(e, k, _inputs(r, k)) for k, e in fp32s.items() if _inputs(r, k) is not None},
                   **({"flow": r.flow} if r.flow is not None else {})}
            gated.append(_Held(r, spans, e32, _labels(spec, temporal, e32, r.ts, policy_cfg, list(spec.heads))))
        for m in encoders:
            if calib_rec is not None:
                x = _inputs(calib_rec, m)
                x = x[:len(x) // 2][np.linspace(0, len(x) // 2 - 1, min(max_calib, len(x) // 2)).astype(int)]
            else:
                x = _calibration_inputs(calib_files, spec, m, max_calib)
            record["encoders"][m] = _calibrate_encoder(spec, folder, m, x, [g for g in gated if m in g.e32],
                                                       fp32s[m], temporal, margin, threads, timing_s, policy_cfg)
    finally:
        for e in fp32s.values():
            e.close()
    (folder / GATE_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return record


@dataclass
class _Held:
    """A held-out recording as the gate uses it: its inputs, its truth (or None), its FP32 embeddings and the
    labels the step loop shows with them."""

    rec: Recording
    spans: list | None
    e32: dict[str, np.ndarray]
    lab32: dict[str, list]


def _held_replay(path: Path, spec, max_steps: int) -> Recording | None:
    """A held-out recording's inputs: every stream of the model it has. A model told its streams' presence is
    gated on a recording with one of them too (a silent video for a hybrid's action head); one that is not
    needs them all. None where the recording cannot serve."""
    tries = [spec.modalities, *([(k,) for k in spec.modalities] if spec.presence else [])]
    for wanted in tries:
        try:
            return replay_inputs(path, spec, max_steps=max_steps, modalities=wanted)
        except SourceError as e:
            why = e
    log.info("not gating on %s", why)
    return None


def _calibrate_encoder(spec, folder: Path, m: str, x: np.ndarray, gated: list[_Held], fp32: OnnxRuntimeEngine,
                       temporal, margin: Margin, threads: int, timing_s: float, policy_cfg) -> dict:
    """Quantize encoder m on its calibration inputs x, gate it on the held-out recordings that have its stream,
    time it; returns its int8.json entry."""
    if not gated:
        raise SourceError(f"no held-out recording has {m}: pass some with it (--held-out, or more under --data)")
    heads = [h for h in spec.heads if m in spec.inputs_of(h)]
    fp32_path = _fp32_path(spec, m)
    int8_path = folder / f"{m}_encoder.int8.onnx"
    ranges = folder / f"{m}_encoder.ranges.json"
    t0 = time.perf_counter()
    quantize_encoder(fp32_path, int8_path, INPUT[m], x, ranges)
    tensorrt_calibration_cache(ranges, folder / f"{m}_encoder.trt.cache")
    log.info("quantized the %s encoder on %d inputs in %.1f s", m, len(x), time.perf_counter() - t0)
    int8 = OnnxRuntimeEngine(int8_path, threads, name=f"{m}_encoder_int8")
    cos, agree, hits = [], {h: [] for h in heads}, {}
    try:
        for g in gated:
            r = g.rec
            e8 = {**g.e32, m: _embed(int8, m, _inputs(r, m))}
            cos.append(cosine(g.e32[m], e8[m]))
            lab8 = _labels(spec, temporal, e8, r.ts, policy_cfg, heads)
            for h in heads:
                agree[h] += [a == b for a, b in zip(g.lab32[h], lab8[h]) if a is not None]
            if g.spans:
                for tag, labs in (("fp32", g.lab32), ("int8", lab8)):
                    for h, (hit, n) in _accuracy(labs, r.ts, g.spans, {h: spec.heads[h] for h in heads}).items():
                        acc = hits.setdefault(f"{h}_accuracy", {"fp32": [0, 0], "int8": [0, 0]})[tag]
                        acc[0] += hit
                        acc[1] += n
        cos_all = np.concatenate(cos)
        measured = {"cosine_mean": float(cos_all.mean()), "cosine_min": float(cos_all.min()),
                    "label_agreement": {h: float(np.mean(v)) if v else 1.0 for h, v in agree.items()},
                    "metrics": {k: {t: v[t][0] / v[t][1] for t in v} for k, v in hits.items()},
                    "held_out_steps": sum(len(g.rec.ts) for g in gated),
                    "truth_steps": {k: v["fp32"][1] for k, v in hits.items()}}
        passed, reason = decide(measured, margin)
        speed = encoder_speed(fp32, int8, INPUT[m], x[:32], timing_s)
    finally:
        int8.close()
    log.info("%s encoder INT8: %s (%s); speed-up x%.2f at batch 1, x%.2f at batch 32", m,
             "passed" if passed else "REFUSED", reason, speed["speedup_batch1"], speed["speedup_batch32"])
    return {"file": int8_path.name, "source": file_digest(fp32_path), "passed": passed, "reason": reason,
            **measured, "speed": speed, "calibration_inputs": len(x)}
