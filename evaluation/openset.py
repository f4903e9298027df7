"""What a model says about what it was never taught: the open-set figures of `actstream eval`.

Every clip is replayed through the step path as replay does it (one scheduler on the virtual clock, all the
clips as streams, the label policy included: what a subscriber sees), and the steps after the first second
are counted:
- talking faces (GRID, a head and shoulders speaking to the camera: the webcam scene): the share of steps
  whose action is `still`;
- actions outside the classes (the mmaction2 samples: Kinetics arm-wrestling, UCF101 eye make-up; KTH's
  boxing, no longer a class of the default): the share of steps with a known action label (not `still`, not
  `other`) at a score of 0.8 or more, and the labels given;
- generated frames without a person (the demo sample): the same;
- a soundtrack outside the audio classes (the eye make-up clip's): what `activity` and `speech` say, beside
  silero-vad's speech segments on the same audio (a person speaking there is speech, not an unknown sound).
All of these are test splits of ../shared/data (or made by the product): nothing here is trained or tuned on.
"""

from __future__ import annotations

import logging
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

from actstream.engines.bundle import ModelSpec
from actstream.stream.config import PolicyConfig
from actstream.stream.pipeline import replay_many
from actstream.stream.policy import LabelPolicy
from actstream.stream.recognizer import recognizer_for
from actstream.stream.sources import FileSource
from actstream.training.data import SETTLE_S

log = logging.getLogger(__name__)
CONFIDENT = 0.8
NOT_AN_ACTION = ("still", "other")


def _sources(spec: ModelSpec, paths: dict[str, Path]) -> dict[str, FileSource]:
    audio = spec.audio
    return {sid: FileSource(p, sample_rate=audio.sample_rate if audio else 16000,
                            window_samples=audio.window_samples if audio else 1,
                            use_audio="audio" in spec.modalities, use_video="video" in spec.modalities)
            for sid, p in paths.items()}


def _head_steps(msgs: list[dict], head: str) -> list[dict]:
    return [m for m in msgs if m.get("head") == head and m["t"] > SETTLE_S + 1e-9]


def _summary(per_clip: dict[str, list[dict]]) -> dict:
    """Steps, the share that are `still`, the share with a known action at CONFIDENT or more, the labels."""
    every = [m for ms in per_clip.values() for m in ms]
    n = max(1, len(every))
    confident = lambda m: m["label"] not in NOT_AN_ACTION and m["score"] >= CONFIDENT  # noqa: E731
    return {"clips": len(per_clip), "steps": len(every),
            "still_share": round(sum(m["label"] == "still" for m in every) / n, 4),
            "other_share": round(sum(m["label"] == "other" for m in every) / n, 4),
            "known_action_confident_share": round(sum(confident(m) for m in every) / n, 4),
            "labels": dict(Counter(m["label"] for m in every).most_common()),
            "per_clip": {sid: {"steps": len(ms), "still": sum(m["label"] == "still" for m in ms),
                               "known_confident": sum(confident(m) for m in ms),
                               "labels": dict(Counter(m["label"] for m in ms).most_common(4))}
                         for sid, ms in per_clip.items()}}


def open_set(spec: ModelSpec, engines, data_root: Path, policy_cfg: PolicyConfig | None = None) -> dict:
    """The open-set figures of a model with an `action` head (see the module's docstring)."""
    from actstream.views.demo import make_demo_sample

    policy = LabelPolicy(recognizer_for(spec, engines, spec.step_ms), policy_cfg or PolicyConfig())
    video = data_root / "video"
    groups = {"talking_faces": sorted((video / "grid_av").rglob("*.mp4")),
              "unknown_actions": sorted((video / "mmaction2_samples").rglob("*.*"))
              + sorted((video / "kth" / "boxing").glob("person04_*"))}
    with tempfile.TemporaryDirectory(prefix="actstream-openset-") as tmp:
        groups["generated_frames"] = [make_demo_sample(Path(tmp) / "demo.mp4")]
        paths = {f"{g}-{i}": p for g, ps in groups.items() for i, p in enumerate(ps)}
        msgs = replay_many(policy, _sources(spec, paths), spec.step_ms)
    report: dict = {}
    for g, ps in groups.items():
        report[g] = _summary({p.name: _head_steps(msgs[f"{g}-{i}"], "action") for i, p in enumerate(ps)})
    eye = next((sid for sid, p in paths.items() if "makeup" in p.parent.name), None)
    if eye is not None and {"speech", "activity"} <= set(spec.heads):
        report["unknown_sound"] = _soundtrack(paths[eye], msgs[eye])
    return report


def _soundtrack(path: Path, msgs: list[dict]) -> dict:
    """What the audio heads say on a soundtrack outside their classes, beside silero-vad on the same audio."""
    from actstream.evaluation.peers import silero_steps
    from actstream.stream.sources import load_audio

    act, sp = [m for m in msgs if m.get("head") == "activity"], [m for m in msgs if m.get("head") == "speech"]
    audio = load_audio(path, 16000)
    silero = silero_steps(audio, len(sp))
    said = np.array([m["label"] == "speech" for m in sp])
    return {"clip": path.name, "steps": len(sp),
            "activity": dict(Counter(m["label"] for m in act).most_common()),
            "activity_confident_event_share": round(sum(m["label"] not in ("speaking", "quiet") and m["score"] >= CONFIDENT
                                                        for m in act) / max(1, len(act)), 4),
            "speech_share": round(float(said.mean()) if len(said) else 0.0, 4),
            "silero_vad_speech_share": round(float(np.mean(silero)) if len(silero) else 0.0, 4),
            "agreement_with_silero": round(float(np.mean(said == silero[:len(said)])) if len(said) else 0.0, 4)}
