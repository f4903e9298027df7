"""The loop a tutorial writes, for comparison: OpenCV reads each frame, PyTorch runs EfficientNet-Lite0 on it
eagerly, an nn.LSTM steps once per frame, and json.dumps prints a label per frame.

    python -m bench.naive VIDEO [--device cpu|cuda] [--stats FILE]

Same CNN weights and input size as the product, so the difference is the plumbing, not the model.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.naive")
    p.add_argument("video")
    p.add_argument("--device", default="cpu")
    p.add_argument("--stats", help="write frames and seconds as JSON here")
    args = p.parse_args(argv)

    import cv2
    import numpy as np
    import torch

    from actstream.engines.efficientnet import load_pretrained

    device = torch.device(args.device)
    cnn = load_pretrained().to(device)
    lstm = torch.nn.LSTM(1280, 128).to(device)
    head = torch.nn.Linear(128, 12).to(device)
    classes = [f"class{i}" for i in range(12)]
    state = None
    cap = cv2.VideoCapture(args.video)
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    start = time.perf_counter()
    n = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        rgb = cv2.cvtColor(cv2.resize(frame, (224, 224)), cv2.COLOR_BGR2RGB)
        x = torch.from_numpy((rgb.astype(np.float32) - 127.0) / 128.0).permute(2, 0, 1)[None].to(device)
        with torch.no_grad():
            emb = cnn(x)
            out, state = lstm(emb[None], state)
            probs = torch.softmax(head(out[0, 0]), dim=-1).cpu().numpy()
        best = int(probs.argmax())
        print(json.dumps({"t": n / fps, "label": classes[best], "score": float(probs[best])}))
        n += 1
    cap.release()
    elapsed = time.perf_counter() - start
    if args.stats:
        with open(args.stats, "w") as fh:
            json.dump({"frames": n, "elapsed_s": elapsed, "frames_per_s": n / elapsed if elapsed else 0.0}, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
