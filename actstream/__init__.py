"""actstream: real-time activity and speech recognition.

The public Python API, stable in name and signature (everything else is internal):

    subscribe(endpoint, topics=None, timeout_s=None, ..., streams=None) -> Iterator[dict]
        the label stream of a running `actstream live`, `replay` or `serve` (actstream.stream.client)
    SeqTracker
        what a subscriber missed (gaps in seq, bad messages, reconnects), for subscribe(tracker=...)
    Recognizer(model="default", backend="onnxruntime", audio=None, video=None, config=None)
        the recognizer in your own program: push_video(frame, t), push_audio(samples, t), finish(), reset(),
        close(); each returns the StepLabels the pushed input completed (actstream.stream.inprocess)
    StepLabels(t, labels), HeadLabel(label, score, scores, changed)
        one step's labels, and one head's

Names are imported on first use: `import actstream` loads nothing heavy. The command is actstream.cli.
"""

__all__ = ["HeadLabel", "Recognizer", "SeqTracker", "StepLabels", "subscribe"]

_WHERE = {"subscribe": "actstream.stream.client", "SeqTracker": "actstream.stream.client",
          "Recognizer": "actstream.stream.inprocess", "StepLabels": "actstream.stream.inprocess",
          "HeadLabel": "actstream.stream.policy"}


def __getattr__(name: str):
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'actstream' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
