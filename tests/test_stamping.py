"""Where record puts each microphone block and camera frame (stream/stamping.py), driven with the delivery
patterns real devices show: a late start, steady 20 ms callbacks with jitter, PulseAudio's fragments, a
pause in delivery, a reopened stream, a stall followed by a burst, and clocks that drift."""

import numpy as np
import pytest

from actstream.views.stamping import AudioPlacer, VideoStamps

RATE = 16000
BLOCK = 320  # 20 ms


def place(blocks, seconds=6.0):
    """Feed (delivery time s, new stream) per 20 ms block whose samples count up from 0; return the placer and
    the recording's audio (NaN where nothing was written), checking the chunks are contiguous."""
    placer = AudioPlacer(RATE, seconds)
    chunks, n = [], 0
    for t, broken in blocks:
        chunks += placer.add(np.arange(n, n + BLOCK, dtype=np.float32), t, broken)
        n += BLOCK
    chunks += placer.finish()
    audio = np.full(int(seconds * RATE), np.nan, np.float32)
    for (start, x), nxt in zip(chunks, chunks[1:] + [None]):
        audio[start:start + len(x)] = x
        assert nxt is None or nxt[0] == start + len(x)
    return placer.done, audio


def when(audio, sample):
    """Recording time (s) at which the captured sample number `sample` was placed."""
    return np.flatnonzero(audio == sample)[0] / RATE


def steady(first_end, count, jitter=0.004, seed=0, start=0):
    rng = np.random.default_rng(seed)
    return [(first_end + k * 0.02 + rng.uniform(0, jitter), k == 0 and start == 0) for k in range(count)]


def test_a_late_microphone_starts_where_it_was_captured():
    done, audio = place(steady(1.92, 205))  # first block delivered 1.92 s in: captured 1.90-1.92 s
    assert done.first == int(1.9 * RATE) and when(audio, 0) == pytest.approx(1.9, abs=0.001)
    assert done.captured == int(4.1 * RATE) and done.silence == done.cut == 0
    assert not np.isnan(audio[int(1.9 * RATE):]).any()  # to the end of the recording


def test_pulseaudio_fragments_and_jitter_keep_the_audio_in_one_piece():
    blocks = [(1.0 + (k // 2 + 1) * 0.04 + 0.0002 * (k % 2), k == 0) for k in range(250)]  # two blocks at once
    done, audio = place(blocks)
    assert done.gaps == 0 and done.cut == 0 and when(audio, 0) == pytest.approx(1.0, abs=0.001)


def test_a_pause_in_delivery_stays_a_gap_in_time():
    """No callback for a second (a source that delivered nothing), then the real pace again: what follows
    is placed after the pause (silence between), not right after what came before it."""
    blocks = steady(1.02, 100, jitter=0) + [(t + 3.0, False) for t, _ in steady(1.02, 150, jitter=0)[:100]]
    done, audio = place(blocks)
    assert when(audio, 100 * BLOCK) == pytest.approx(4.0, abs=0.001)
    assert done.gaps == 1 and done.silence == RATE and (audio[3 * RATE:4 * RATE] == 0).all()


def test_a_reopened_stream_starts_a_new_line():
    blocks = steady(1.02, 50, jitter=0) + [(2.52 + k * 0.02, k == 0) for k in range(100)]
    done, audio = place(blocks)
    assert when(audio, 50 * BLOCK) == pytest.approx(2.5, abs=0.001) and done.silence == RATE // 2


def test_a_stall_then_a_burst_is_put_back_where_it_was_captured():
    """The process held for 2 s: PulseAudio kept the audio and delivers it at once. Nothing was lost, so
    nothing moves: no gap, no cut, every block where its samples were captured."""
    blocks = steady(0.52, 50, jitter=0) + [(3.5 + 0.0001 * k, False) for k in range(100)] + \
        [(3.52 + k * 0.02, False) for k in range(100)]
    done, audio = place(blocks)
    assert done.gaps == done.cut == 0 and done.silence == 0
    assert when(audio, 100 * BLOCK) == pytest.approx(2.5, abs=0.001)  # delivered at 3.5 s, captured at 2.5 s


@pytest.mark.parametrize("period, silence, cut", [(0.0202, True, False), (0.0198, False, True)])
def test_a_drifting_clock_is_pulled_back_to_the_wall_clock(period, silence, cut):
    """A device 1 % slow (its samples last longer than they say) or fast: short silences or short cuts keep
    it within tolerance of the wall clock, instead of a drift that grows with the length."""
    blocks = [(0.52 + k * period, k == 0) for k in range(270)]
    done, audio = place(blocks)
    last = 269 * BLOCK
    assert when(audio, last) == pytest.approx(0.52 + 269 * period - 0.02, abs=0.021)
    assert (done.silence > 0) == silence and (done.cut > 0) == cut


def test_video_stamps_keep_each_frame_inside_the_recording_and_increasing():
    stamps = VideoStamps(2.0)
    got = [stamps.pts_for(t) for t in (-0.01, 0.004, 0.0441, 0.0442, 0.084, 1.9996, 2.1)]
    assert got == [None, 4, 44, 45, 84, None, None]  # a frame 0.1 ms after another: 1 ms later
    assert stamps.kept == 4 and stamps.outside == 3 and stamps.longest_ms == 40
