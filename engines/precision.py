"""Which file an encoder runs from: its FP32 ONNX, or the INT8 (QDQ) ONNX made by `actstream calibrate`.

The calibration writes `int8.json` into the model folder: per encoder, the INT8 file, the digest of the FP32
ONNX it was made from, and whether it passed the accuracy gate. model.precision chooses:
  fp32  always the FP32 files;
  int8  the INT8 files (an error if there are none; a warning if they failed the gate);
  auto  INT8 for an encoder only where the gate passed and the FP32 source is unchanged, else FP32.
"""

from __future__ import annotations

import logging
from pathlib import Path

from actstream.common.files import show_value, shown_path
from actstream.common.errors import EngineError

from actstream.engines.cache import file_digest

log = logging.getLogger(__name__)

GATE_FILE = "int8.json"
PRECISIONS = ("auto", "fp32", "int8")


ENCODERS = ("audio", "video")


def read_gate(folder: Path) -> dict:
    """The calibration record of a model folder ({} when it was never calibrated), its `encoders` checked:
    per encoder, `file` (a file name inside the folder), `passed` (bool), `source` (a digest), `reason`
    (text). Other keys are measurements, kept as they are. One EngineError line otherwise."""
    from actstream.engines.bundle import model_file, read_json

    fix = "run `actstream calibrate` again or delete it"
    path = model_file(Path(folder), GATE_FILE, "calibration record")
    if not path.exists():
        return {}
    data = read_json(path, "calibration record", fix)

    def bad(where: str, value, expected: str):
        return EngineError(f"{shown_path(path)}: {where} = {show_value(value)} is invalid: expected {expected}: {fix}")

    if not isinstance(data, dict):
        raise bad("the top level", data, "a JSON object")
    encoders = data.get("encoders", {})
    if not isinstance(encoders, dict):
        raise bad("encoders", encoders, "an object: encoder name -> record")
    for name, entry in encoders.items():
        if name not in ENCODERS:
            raise bad("encoder", name, " or ".join(ENCODERS))
        if not isinstance(entry, dict):
            raise bad(f"encoders.{name}", entry, "an object with file, source, passed")
        model_file(Path(folder), entry.get("file"), f"{name} INT8 encoder (int8.json)")
        for key, kind, expected in (("passed", bool, "true or false"), ("source", str, "a digest"),
                                    ("reason", str, "a text")):
            if key in entry and not isinstance(entry[key], kind):
                raise bad(f"encoders.{name}.{key}", entry[key], expected)
        if len(entry.get("source", "")) > 128:
            raise bad(f"encoders.{name}.source", entry["source"], "a digest of at most 128 characters")
    return data


def encoder_file(folder: Path, encoder: str, fp32_path: Path, precision: str) -> Path:
    """The ONNX file `encoder` ("audio" or "video") runs from under `precision`."""
    if precision not in PRECISIONS:
        raise EngineError(f"model.precision {precision!r} unknown: expected {' | '.join(PRECISIONS)}")
    if precision == "fp32":
        return fp32_path
    entry = read_gate(folder).get("encoders", {}).get(encoder)
    int8 = Path(folder) / entry["file"] if entry else None
    if precision == "int8":
        if int8 is None or not int8.is_file():
            raise EngineError(f"model {shown_path(folder)} has no INT8 {encoder} encoder: run `actstream calibrate "
                              f"--model {shown_path(folder)} --data PATH` first, or set model.precision = \"fp32\"")
        if not entry.get("passed"):
            log.warning("INT8 %s encoder of %s failed the accuracy gate (%s); using it because precision is int8",
                        encoder, folder, str(entry.get("reason", "see int8.json"))[:200])
        return int8
    if int8 is None or not int8.is_file() or not entry.get("passed"):
        return fp32_path
    if entry.get("source") != file_digest(fp32_path):
        log.warning("INT8 %s encoder of %s was calibrated from another FP32 model: using FP32 (run `actstream "
                    "calibrate` again)", encoder, folder)
        return fp32_path
    return int8
