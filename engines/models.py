"""Model definitions: the audio CNN, the temporal model (LSTM or BiLSTM with fusion and heads).

The four architectures are made of these parts (see ARCHS):
  video_lstm  EfficientNet-Lite0 per frame -> LSTM
  audio_lstm  2D CNN over log-mel windows -> LSTM
  bilstm      2D CNN over log-mel windows -> BiLSTM (offline, or with a bounded look-ahead)
  hybrid      video and audio embeddings fused on the step clock -> LSTM
"""

from __future__ import annotations

import torch
from torch import nn

from actstream.engines.archs import ARCHS, MOTION_ALPHA, VIDEO_DIM, stream_of, video_motion  # noqa: F401  (defined without torch)


def _sep(cin: int, cout: int) -> nn.Sequential:
    """Depthwise-separable 3x3 conv block: cheap enough to run ~1000 windows a second on two cores."""
    return nn.Sequential(
        nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False), nn.BatchNorm2d(cin), nn.ReLU(inplace=True),
        nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


class AudioCNN(nn.Module):
    """2D CNN over one log-mel window.

    Input: (N, frames, n_mels) log-mel from stream.frontend.logmel. Output: (N, dim) embedding.
    The per-band normalization measured on the training data is part of the network (buffers), so the
    exported ONNX takes raw log-mel.
    """

    def __init__(self, n_mels: int = 64, dim: int = 128, width: int = 32):
        super().__init__()
        self.register_buffer("band_mean", torch.zeros(n_mels))
        self.register_buffer("band_std", torch.ones(n_mels))
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(1, w, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
            _sep(w, 2 * w), nn.MaxPool2d(2),
            _sep(2 * w, 4 * w), nn.MaxPool2d(2),
            _sep(4 * w, 4 * w), nn.MaxPool2d(2),
            _sep(4 * w, 6 * w),
        )
        self.proj = nn.Linear(3 * 6 * w, dim)
        self.dim = dim

    def forward(self, logmel: torch.Tensor) -> torch.Tensor:
        x = ((logmel - self.band_mean) / self.band_std).unsqueeze(1)
        x = self.features(x)  # (N, C, T', F')
        x = x.mean(dim=3)  # pool frequency: (N, C, T') with T' = 6 slices of ~160 ms
        # pool time three ways: average, peak, and the newest slice, so the embedding knows what is happening
        # now and not only what happened somewhere in the last second (offsets follow within ~200 ms)
        x = torch.cat([x.mean(dim=2), x.amax(dim=2), x[:, :, -1]], dim=1)
        return self.proj(x)


class Temporal(nn.Module):
    """Fusion, LSTM and label heads.

    Each modality's embedding is normalized and projected to `proj` features; the projections of one step are
    concatenated (the fusion happens on the step clock) and fed to the LSTM. The state is explicit: forward
    takes (h0, c0) and returns (hn, cn), so a stream carries it from step to step.

    presence: the input streams (e.g. ("video", "audio")) whose presence the model is told at every step, or
    () for a model that always has all of them. With it, the network takes a `present` input (N, T, streams)
    of 1.0 / 0.0 and a missing stream's projections are zeros, as modality dropout taught it; the flow is part
    of the video stream.
    """

    def __init__(self, modalities: dict[str, int], heads: dict[str, int], hidden: int = 128, proj: int = 128,
                 bidirectional: bool = False, modality_dropout: float = 0.0, presence: tuple[str, ...] = ()):
        super().__init__()
        self.presence = list(presence)
        self.part_stream = [self.presence.index(stream_of(m)) for m in modalities] if presence else []
        # training only: each sequence loses each input (projected to zeros) with this probability, never all of
        # them (with presence: never all of one stream's), so the LSTM learns to do without any one (a camera
        # that drops out, appearance that belongs to one person)
        self.modality_dropout = modality_dropout
        self.modalities = list(modalities)
        self.head_names = list(heads)
        self.bidirectional = bidirectional
        self.hidden = hidden
        self.inputs = nn.ModuleDict({
            m: nn.Sequential(nn.LayerNorm(d), nn.Linear(d, proj), nn.ReLU(inplace=True), nn.Dropout(0.2))
            for m, d in modalities.items()
        })
        self.lstm = nn.LSTM(proj * len(modalities), hidden, batch_first=True, bidirectional=bidirectional)
        out = hidden * (2 if bidirectional else 1)
        self.heads = nn.ModuleDict({h: nn.Linear(out, n) for h, n in heads.items()})

    def zero_state(self, batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        d = 2 if self.bidirectional else 1
        return torch.zeros(d, batch, self.hidden), torch.zeros(d, batch, self.hidden)

    def logits(self, embeddings: dict[str, torch.Tensor], h0: torch.Tensor, c0: torch.Tensor):
        """embeddings: modality -> (N, T, D). Returns ({head: (N, T, classes) logits}, hn, cn)."""
        parts = [self.inputs[m](embeddings[m]) for m in self.modalities]
        if self.presence:  # a missing stream's projections are zeros
            present = embeddings["present"]
            parts = [p * present[..., s:s + 1].to(p.dtype) for p, s in zip(parts, self.part_stream)]
        if self.training and self.modality_dropout > 0 and len(parts) > 1:
            n = parts[0].shape[0]
            keep = torch.rand(n, len(parts)) >= self.modality_dropout
            # never all of them; with presence, never all of one stream's (its heads are taught from it)
            groups = ([[i for i, s in enumerate(self.part_stream) if s == g] for g in range(len(self.presence))]
                      if self.presence else [list(range(len(parts)))])
            for idx in groups:
                none = (~keep[:, idx].any(dim=1)).nonzero().squeeze(1)
                keep[none, torch.tensor(idx)[torch.randint(len(idx), (len(none),))]] = True
            parts = [p * keep[:, i, None, None].to(p.dtype) for i, p in enumerate(parts)]
        x = torch.cat(parts, dim=-1)
        y, (hn, cn) = self.lstm(x, (h0, c0))
        return {h: self.heads[h](y) for h in self.head_names}, hn, cn

    @property
    def input_names(self) -> list[str]:
        """The per-step inputs in ONNX order: the modalities, then `present` where the model has it."""
        return [*self.modalities, *(["present"] if self.presence else [])]

    def forward(self, *args: torch.Tensor):
        """Positional inputs in `input_names` order, then h0, c0 (the ONNX signature).
        Returns head probabilities in `self.head_names` order, then hn, cn."""
        names = self.input_names
        embeddings = dict(zip(names, args[:len(names)]))
        h0, c0 = args[len(names):]
        logits, hn, cn = self.logits(embeddings, h0, c0)
        return (*[torch.softmax(logits[h], dim=-1) for h in self.head_names], hn, cn)
