import numpy as np

from actstream.stream.rings import AudioRing, FrameRing


def frame(v):
    return np.full((2, 3, 3), v, np.uint8)


def test_frame_ring_overwrites_oldest_and_counts_drops():
    ring = FrameRing(3, (2, 3, 3))
    for i in range(5):
        ring.write(frame(i), t=i * 0.1, wall=100 + i)
    assert ring.dropped == 2  # frames 0 and 1 were overwritten unread
    img, t, wall = ring.latest()
    assert img[0, 0, 0] == 4 and t == 0.4 and wall == 104
    ring.write(frame(5), 0.5, 105)
    assert ring.dropped == 2  # everything up to frame 4 was consumed by the read


def test_frame_ring_latest_at_time():
    ring = FrameRing(4, (2, 3, 3))
    for i in range(4):
        ring.write(frame(i), t=i * 0.1, wall=0)
    img, t, _ = ring.latest(0.25)
    assert img[0, 0, 0] == 2 and abs(t - 0.2) < 1e-12
    assert ring.latest(-1.0) is None


def test_audio_ring_wraps_and_reads_by_absolute_index():
    ring = AudioRing(10)
    ring.write(np.arange(7, dtype=np.float32))
    ring.write(np.arange(7, 14, dtype=np.float32))
    assert ring.written == 14
    assert ring.read(14, 10).tolist() == list(range(4, 14))
    assert ring.read(12, 5).tolist() == [7, 8, 9, 10, 11]
    # samples older than the ring, or not captured yet, read as zeros
    assert ring.read(16, 14).tolist() == [0] * 2 + list(range(4, 14)) + [0] * 2


def test_audio_ring_counts_samples_lost_before_reading():
    ring = AudioRing(8)
    ring.write(np.ones(6, np.float32))
    assert ring.dropped == 0
    ring.write(np.ones(6, np.float32))  # 12 written into 8: 4 never read
    assert ring.dropped == 4
    ring.read(ring.written, 8)
    ring.write(np.ones(8, np.float32))
    assert ring.dropped == 4  # all of those had been read
    ring.write(np.ones(20, np.float32))  # a block longer than the ring keeps its newest samples
    assert ring.written == 40 and ring.dropped == 4 + 20


def test_audio_ring_skip_writes_silence():
    ring = AudioRing(8)
    ring.write(np.ones(2, np.float32))
    ring.skip_to(5)
    ring.write(np.ones(1, np.float32))
    assert ring.read(6, 6).tolist() == [1, 1, 0, 0, 0, 1]
