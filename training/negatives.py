"""What the action head is taught that its classes are not: clips made from the training recordings and from
nothing, so that an ordinary scene gives `still` and an unfamiliar movement gives `other`.

- `rest_frames`: a frame of a training person, held, with the small motions of someone sitting at a desk or
  talking to a camera: a slow sway of the whole picture, a head that nods, a mouth that opens and closes, a
  hand that fidgets (each a smooth local warp), flicker, sensor noise and JPEG compression; half of them a
  close-up (head and shoulders, as a webcam frames a face). Taught as `still`.
- `shapes_frames`: generated motion with no person (shapes moving over a textured background, sometimes a
  running clock drawn over it). Taught as `other`.
- `rotated`: a training recording turned a quarter turn: real human motion in patterns none of the classes
  has. Taught as `other`.
Real recordings of actions outside the classes (KTH's boxing, hand-clapping and jogging) are taught as
`other` too (training/data.py). Everything is drawn from a seeded generator, so a clip is made again the same
for the same name (its embeddings are cached by that name).
"""

from __future__ import annotations

import cv2
import numpy as np

REVISION = 1  # of the generators: the cached embeddings of synthesized clips are keyed by it
SIZE = (320, 240)  # px of a close-up or a generated clip (a webcam's frame)


def _close_up(frame: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A 4:3 crop of 35-70 % of the frame's height around its upper middle, where a person's head and
    shoulders are in the training recordings (people stand in the middle), scaled to SIZE."""
    h, w = frame.shape[:2]
    ch = rng.uniform(0.35, 0.7) * h
    cw = min(w, ch * 4 / 3)
    cx = rng.uniform(0.3, 0.7) * w
    cy = (0.1 + rng.uniform(0.0, 0.32)) * h
    x0 = int(np.clip(cx - cw / 2, 0, w - cw))
    y0 = int(np.clip(cy - ch / 3, 0, h - ch))
    return cv2.resize(frame[y0:y0 + int(ch), x0:x0 + int(cw)], SIZE, interpolation=cv2.INTER_LINEAR)


# local motions of a person at rest: (radius, amplitude at 240 px, frequency) ranges as fractions of the height,
# px and Hz; the head moves slowly and widely, the mouth fast and small, a hand in between
MOTIONS = {"head": ((0.12, 0.30), (0.3, 3.0), (0.2, 2.0)),
           "mouth": ((0.03, 0.08), (0.5, 3.0), (2.0, 7.0)),
           "hand": ((0.05, 0.12), (0.5, 4.0), (0.5, 5.0))}


def rest_frames(frame: np.ndarray, rng: np.random.Generator, n: int, step_s: float = 0.1) -> list[np.ndarray]:
    """n frames (one per step) of a person at rest from one frame of them: BGR uint8."""
    if rng.random() < 0.5:
        frame = _close_up(frame, rng)
    h, w = frame.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    kinds = ["mouth"] + [k for k in ("head",) if rng.random() >= 0.3]
    kinds += ["hand"] * int(sum(rng.random() >= 0.3 for _ in range(int(rng.integers(0, 3)))))
    patches = []
    for kind in kinds:
        (r0, r1), (a0, a1), (f0, f1) = MOTIONS[kind]
        patches.append((rng.uniform(0.2, 0.8) * w, rng.uniform(0.15, 0.85) * h, rng.uniform(r0, r1) * h,
                        rng.uniform(a0, a1) * h / 240, rng.uniform(f0, f1), rng.uniform(0, 2 * np.pi),
                        rng.uniform(0, 2 * np.pi)))
    masks = [np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * r * r)).astype(np.float32)
             for cx, cy, r, *_ in patches]
    sway, sway_f = rng.uniform(0.0, 2.0) * h / 240, rng.uniform(0.1, 0.6)
    noise, flicker, quality = rng.uniform(0.0, 4.0), rng.uniform(0.0, 0.03), int(rng.integers(35, 95))
    out = []
    for i in range(n):
        t = i * step_s
        dx = np.full((h, w), sway * np.sin(2 * np.pi * sway_f * t), np.float32)
        dy = np.full((h, w), 0.5 * sway * np.sin(2 * np.pi * sway_f * 0.7 * t + 1.0), np.float32)
        for mask, (_, _, _, amp, f, angle, phase) in zip(masks, patches):
            a = amp * np.sin(2 * np.pi * f * t + phase) * (0.6 + 0.4 * rng.random())
            dx += mask * (a * np.cos(angle))
            dy += mask * (a * np.sin(angle))
        img = cv2.remap(frame, xs + dx, ys + dy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        img = img.astype(np.float32) * (1.0 + flicker * rng.standard_normal()) + rng.standard_normal(img.shape) * noise
        ok, jpeg = cv2.imencode(".jpg", np.clip(img, 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, quality])
        out.append(cv2.imdecode(jpeg, cv2.IMREAD_COLOR))
    return out


def shapes_frames(rng: np.random.Generator, n: int, step_s: float = 0.1) -> list[np.ndarray]:
    """n frames of generated motion without a person: 1-4 shapes drifting and swinging over a blurred
    random background, half the time with a running clock written over it."""
    w, h = SIZE
    bg = cv2.GaussianBlur((rng.random((h, w, 3)) * 255).astype(np.uint8), (0, 0), rng.uniform(3, 20))
    bg = cv2.addWeighted(bg, 0.6, np.full_like(bg, int(rng.integers(20, 200))), 0.4, 0)
    shapes = [dict(kind=int(rng.integers(3)), r=rng.uniform(0.05, 0.25) * h,
                   colour=tuple(int(v) for v in rng.integers(0, 256, 3)),
                   x=rng.uniform(0, w), y=rng.uniform(0, h), ax=rng.uniform(0, 0.4) * w, ay=rng.uniform(0, 0.4) * h,
                   fx=rng.uniform(0.1, 1.5), fy=rng.uniform(0.1, 1.5), vx=rng.uniform(-0.3, 0.3) * w,
                   vy=rng.uniform(-0.2, 0.2) * h) for _ in range(int(rng.integers(1, 5)))]
    clock = rng.random() < 0.5
    out = []
    for i in range(n):
        t = i * step_s
        img = bg.copy()
        for s in shapes:
            x = (s["x"] + s["vx"] * t + s["ax"] * np.sin(2 * np.pi * s["fx"] * t)) % w
            y = (s["y"] + s["vy"] * t + s["ay"] * np.sin(2 * np.pi * s["fy"] * t)) % h
            r = int(s["r"])
            if s["kind"] == 0:
                cv2.circle(img, (int(x), int(y)), r, s["colour"], -1)
            elif s["kind"] == 1:
                cv2.rectangle(img, (int(x - r), int(y - r // 2)), (int(x + r), int(y + r // 2)), s["colour"], -1)
            else:
                cv2.fillPoly(img, [np.array([[x, y - r], [x - r, y + r], [x + r, y + r]], np.int32)], s["colour"])
        if clock:
            cv2.putText(img, f"{t:5.2f}s", (10, 25), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 2)
        out.append(img)
    return out


def rotated(frames: list[np.ndarray], clockwise: bool) -> list[np.ndarray]:
    """A recording's frames turned a quarter turn."""
    code = cv2.ROTATE_90_CLOCKWISE if clockwise else cv2.ROTATE_90_COUNTERCLOCKWISE
    return [cv2.rotate(f, code) for f in frames]
