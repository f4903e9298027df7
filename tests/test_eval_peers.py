"""Issue 20: eval's peer VADs on real speech, the --compare and --against edges, the speech error analysis on a
hand-built truth, and the regression check of one model against another on the same timelines."""

from __future__ import annotations

import numpy as np
import pytest

from actstream.common.errors import ConfigError
from actstream.evaluation.errors import edge_sensitivity, largest_source_line, speech_errors
from actstream.evaluation.peers import PEERS, check_peers, parse_peers, peer_steps
from actstream.training.data import ACTIVITY_CLASSES, QUIET, SPEAKING, Clip, Segment, mix_timeline
from tests.conftest import SHARED, need_shared, run_cli, tone_and_noise

UTTERANCE = ("audio", "librispeech_test_other", "speech", "2033-164914-0004.wav")  # test split; 4.3 s


@pytest.mark.parametrize("name", PEERS)
def test_each_peer_hears_a_real_utterance_and_not_the_silence_after_it(name):
    from actstream.stream.sources import load_audio

    check_peers([name])  # `make test` installs every peer (TEN VAD's libc++ too): a missing one fails here
    clip = load_audio(need_shared(*UTTERANCE), 16000)
    frames = clip[:len(clip) // 320 * 320].reshape(-1, 320)
    level = 20 * np.log10(np.sqrt((frames ** 2).mean(axis=1)) + 1e-9)
    onset = 1.0 + np.flatnonzero(level > level.max() - 20)[0] * 0.02  # first 20 ms within 20 dB of the loudest
    end = 1.0 + len(clip) / 16000
    x = np.concatenate([np.zeros(16000, np.float32), clip, np.zeros(48000, np.float32)])
    said = peer_steps(name, x, len(x) // 1600)
    speech = np.flatnonzero(said)
    assert abs(speech[0] * 0.1 - onset) <= 0.5, (name, speech[0] * 0.1, onset)
    assert said[int(onset * 10) + 5:int(end * 10)].mean() >= 0.5  # speech while the utterance lasts
    assert not said[int(np.ceil((end + 1.0) * 10)):].any(), (name, speech[-1] * 0.1, end)


def test_compare_names_peers_with_commas_or_repeated_and_refuses_the_unknown():
    assert parse_peers(["silero,ten", "webrtc", "silero"]) == ["silero", "ten", "webrtc"]
    with pytest.raises(ConfigError, match="'vosk' unknown: expected one or more of silero, ten, webrtc"):
        parse_peers(["silero,vosk"])


def test_eval_refuses_an_unknown_peer_in_one_line(tmp_path):
    r = run_cli("eval", "default", str(tmp_path), "--compare", "silero,vosk", "--out", str(tmp_path / "e"))
    assert r.returncode == 2
    assert r.stderr == ("actstream: error: --compare 'vosk' unknown: expected one or more of silero, ten, webrtc "
                        "(comma-separated)\n")
    assert not (tmp_path / "e").exists()


def test_eval_names_the_package_of_a_peer_that_is_not_installed(tmp_path, monkeypatch, capsys):
    import sys

    from actstream.cli import main

    monkeypatch.setitem(sys.modules, "ten_vad", None)  # the package hidden: its import fails as when absent
    assert main(["eval", "default", str(tmp_path), "--compare", "ten", "--out", str(tmp_path / "e")]) == 2
    assert capsys.readouterr().err == ("actstream: error: --compare ten needs the ten-vad package, which is not "
                                       "installed: pip install ten-vad (or pip install 'actstream[eval]')\n")


def _idx(name: str) -> int:
    return ACTIVITY_CLASSES.index(name)


def test_speech_errors_on_a_hand_built_truth():
    # 30 steps: speech 2-8 (mixed at -20 dBFS) and 12-18 (-5 dBFS), laughter 22-25, quiet elsewhere.
    n = 30
    speech, act = np.zeros(n, int), np.full(n, _idx(QUIET))
    speech[2:9] = speech[12:19] = 1
    act[2:9] = act[12:19] = _idx(SPEAKING)
    act[22:26] = _idx("laughter")
    segs = [Segment(2, 9, SPEAKING, True, -20.0), Segment(12, 19, SPEAKING, True, -5.0),
            Segment(22, 26, "laughter", False, -10.0)]
    pred = np.zeros(n, int)
    pred[5:9] = 1  # the first segment's first 300 ms missed
    pred[12:19] = 1
    pred[22:26] = 1  # the laughter called speech
    e = speech_errors([speech], [act], [segs], [pred])
    assert e["onsets"] == {"segments": 2, "missed": 1, "missed_share": 0.5}
    assert e["quiet_speech"]["level_dbfs_edges"] == [-15.0, -10.0]
    assert e["quiet_speech"]["recall_by_tercile"] == {"quiet": {"steps": 7, "recall": 0.5714},
                                                      "middle": {"steps": 0, "recall": None},
                                                      "loud": {"steps": 7, "recall": 1.0}}
    # steps 17-30 lie within 500 ms of the laughter: of the speech, 17 and 18
    assert e["near_events"] == {"near": {"steps": 2, "recall": 1.0}, "elsewhere": {"steps": 12, "recall": 0.75}}
    assert e["false_speech_per_event"]["laughter"] == {"steps": 4, "called_speech": 1.0}
    assert e["false_speech_per_event"]["cough"] == {"steps": 0, "called_speech": None}
    assert e["sources"]["wrong_steps"] == 7
    assert e["sources"]["steps"] == {"missed_onset": 3, "missed_near_event": 0, "missed_quiet": 0,
                                     "missed_other": 0, "false_tail": 0, "false_voice_like": 4,
                                     "false_other_event": 0, "false_background": 0}
    assert largest_source_line(e) == ("largest error source: laughter, cough or throat-clearing taken for speech: "
                                      "4 of 7 wrong steps (57%)")


def test_edge_sensitivity_counts_what_one_step_late_costs():
    # two runs of speech, 2 and 8 steps: one step late, 8 of 10 speech steps are caught and 2 called too long
    speech = np.zeros(20, int)
    speech[2:4] = speech[8:16] = 1
    e = edge_sensitivity([speech, np.zeros(5, int)])
    assert e["speech_runs_per_timeline"] == [2, 0] and e["speech_steps_per_timeline"] == [10, 0]
    assert e["one_step_late_f1_per_timeline"] == [0.8, 0.0]  # precision 8/10, recall 8/10


def test_mixed_segments_own_exactly_the_speech_truths_steps():
    rng = np.random.default_rng(3)
    voice = tone_and_noise(1.5, 16000)[:, 0]
    clips = [Clip(voice, SPEAKING, True, "s", "s.wav"), Clip(voice[::-1].copy(), "knock", False, "e", "e.wav")]
    tl = mix_timeline(clips, 30.0, rng, speech_share=0.5)
    owned = np.zeros(len(tl.speech), int)
    for s in tl.segments:
        if s.speech:
            owned[s.start:s.end] = 1
    assert owned.tolist() == tl.speech.tolist()
    assert all(-30.0 <= s.level_dbfs <= -1.0 for s in tl.segments)


def test_varied_speech_keeps_its_truth_and_the_eval_timelines_stay_as_recorded():
    """Training's speech variation (pace 0.9-1.1, a room at half the draws): each varied clip lasts its
    length over the pace and keeps its level within a few dB; the segments still own exactly the speech
    truth's steps; with no variation asked for, a seed gives the timeline it gave before (the eval's)."""
    from actstream.stream.sources import load_audio
    from actstream.training.data import vary_speech

    voice = load_audio(need_shared(*UTTERANCE), 16000)[:48000]
    rng = np.random.default_rng(0)
    for _ in range(8):
        v = vary_speech(voice, rng)
        assert len(voice) / 1.1 - 1 <= len(v) <= len(voice) / 0.9 + 1
        assert abs(20 * np.log10(np.std(v) / np.std(voice))) < 3.0
    clips = [Clip(voice, SPEAKING, True, "s", "s.wav"), Clip(voice[::-1].copy(), "knock", False, "e", "e.wav")]
    varied = mix_timeline(clips, 30.0, np.random.default_rng(3), speech_share=0.5, speech_variation=1.0)
    owned = np.zeros(len(varied.speech), int)
    for s in varied.segments:
        owned[s.start:s.end] = s.speech
    assert owned.tolist() == varied.speech.tolist()
    plain = mix_timeline(clips, 30.0, np.random.default_rng(3), speech_share=0.5)
    again = mix_timeline(clips, 30.0, np.random.default_rng(3), speech_share=0.5, speech_variation=0.0)
    assert np.array_equal(plain.audio, again.audio) and not np.array_equal(plain.audio, varied.audio)


def test_a_model_against_itself_differs_by_exactly_nothing():
    from actstream.evaluation.eval import compare_models

    need_shared("manifests", "dcase2016_task2.csv")
    r = compare_models("default", "default", SHARED, timelines=1, seconds=8.0)
    assert r["timelines"] == 1
    assert r["difference_per_timeline"] == [0.0]
    assert r["speech_f1_per_timeline"] == r["other_speech_f1_per_timeline"]
    assert r["difference"] == 0.0 and r["worse_on"] == 0
