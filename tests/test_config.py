import dataclasses
import os

import pytest

from actstream.stream.config import MAX_CONFIG_BYTES, Config, load_config
from actstream.common.errors import ConfigError
from tests.conftest import ROOT, run_cli


def test_shipped_config_lists_the_defaults():
    cfg = load_config(ROOT / "config.toml")
    assert cfg == Config()
    # and it mentions every key of every section
    text = (ROOT / "config.toml").read_text()
    for section in dataclasses.fields(Config):
        for f in dataclasses.fields(getattr(cfg, section.name)):
            assert f"\n{f.name} =" in text, f"{section.name}.{f.name} missing from config.toml"


@pytest.mark.parametrize("body, words", [
    ("[step]\nstep_ms = 55\n", ["step.step_ms", "55", "multiple of 10"]),
    ("[policy]\nenter = 0.3\nexit = 0.6\n", ["policy.exit", "0.6"]),
    ("[model]\nbackend = \"cuda\"\n", ["model.backend", "cuda", "onnxruntime"]),
    ("[model]\nthreds = 2\n", ["unknown key model.threds", "threads"]),
    ("[nonsense]\n", ["unknown section [nonsense]"]),
    ("[step\n", ["not valid TOML"]),
    ("[publish]\nmax_peers = -1\n", ["publish.max_peers = -1", "0 (chosen from the open-file limit) to 65536"]),
])
def test_bad_config_names_key_and_value(tmp_path, body, words):
    p = tmp_path / "c.toml"
    p.write_text(body)
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    for w in words:
        assert w in str(exc.value)


def test_cli_rejects_invalid_config_in_one_line(tmp_path, media):
    p = tmp_path / "c.toml"
    p.write_text("[policy]\nsmoothing = 0\n")
    r = run_cli("replay", str(media["wav"]), "--config", str(p), "--publish", "none")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr
    assert "policy.smoothing = 0.0 is invalid" in r.stderr


# issue 10, item 6: bytes that are no config give one ConfigError line, read from a regular file only and
# bounded (the checks run before any byte is read from a FIFO or a device)

def _config_error(path) -> str:
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    msg = str(exc.value)
    assert "\n" not in msg and str(path) in msg
    return msg


def test_random_bytes_and_non_utf8_are_refused(tmp_path):
    p = tmp_path / "random.toml"
    p.write_bytes(bytes(range(256)) * 8)
    assert "not UTF-8 text (byte 0x80 at offset 128)" in _config_error(p)
    p.write_bytes("[step]\nstep_ms = 100 # caf\xe9\n".encode("latin-1"))
    assert "not UTF-8 text" in _config_error(p)


def test_a_media_file_as_config_is_one_line(media):
    r = run_cli("replay", str(media["wav"]), "--config", str(media["mp4"]), "--publish", "none")
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("actstream: error: config file") and r.stderr.strip().count("\n") == 0, r.stderr


@pytest.mark.parametrize("body", ["a = " + "[" * 50_000 + "]" * 50_000 + "\n",
                                  "a = " + "{b = " * 50_000 + "1" + "}" * 50_000 + "\n"])
def test_deep_nesting_is_refused(tmp_path, body):
    p = tmp_path / "deep.toml"
    p.write_text(body)
    assert "too deeply" in _config_error(p)


def test_dev_zero_is_not_read(tmp_path):
    assert "not a regular file (a device)" in _config_error("/dev/zero")


def test_a_fifo_does_not_hang(tmp_path, media):
    fifo = tmp_path / "config.fifo"
    os.mkfifo(fifo)
    assert "not a regular file (a FIFO)" in _config_error(fifo)
    # and the command, in a child process, says so instead of waiting for a writer
    r = run_cli("replay", str(media["wav"]), "--config", str(fifo), "--publish", "none", timeout=60)
    assert r.returncode == 2 and "not a regular file (a FIFO)" in r.stderr, r.stderr


def test_folder_and_oversized_file_are_refused(tmp_path):
    assert "is a folder" in _config_error(tmp_path)
    p = tmp_path / "big.toml"
    p.write_text("# " + "x" * MAX_CONFIG_BYTES + "\n")
    assert f"more than the {MAX_CONFIG_BYTES} bytes allowed" in _config_error(p)


# issue 10, item 9: a bool is no number, and neither is inf or nan

@pytest.mark.parametrize("body, words", [
    ("[model]\nthreads = true\n", ["model.threads = True"]),
    ("[publish]\nhwm = true\n", ["publish.hwm = True"]),
    ("[publish]\nmax_peers = true\n", ["publish.max_peers = True"]),
    ("[publish]\nmax_peers = 70000\n", ["publish.max_peers = 70000"]),
    ("[live]\nseconds = inf\n", ["live.seconds = inf"]),
    ("[live]\nseconds = nan\n", ["live.seconds = nan"]),
    ("[policy]\nsmoothing = true\n", ["policy.smoothing = True"]),
    ("[step]\nstep_ms = false\n", ["step.step_ms = False"]),
    ("[live]\nstall_s = -inf\n", ["live.stall_s = -inf"]),
    ("[live]\nseconds = 100000000000000000000000000000000000000000000000000000000000000000000000000000000000"
     "00000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
     "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
     "000000000000000000000000000000000000000000000000000000000000000000000000\n", ["live.seconds"]),
    ("[model]\npath = \"a\\u0000b\"\n", ["model.path"]),
    ("[\"a\\nb\"]\n", ["unknown section ['a\\nb']"]),
])
def test_numbers_are_not_bools_nor_infinite(tmp_path, body, words):
    p = tmp_path / "c.toml"
    p.write_text(body)
    msg = _config_error(p)
    for w in words:
        assert w in msg


def test_cli_refuses_threads_true_in_one_line(tmp_path, media):
    p = tmp_path / "c.toml"
    p.write_text("[model]\nthreads = true\n")
    r = run_cli("replay", str(media["wav"]), "--config", str(p), "--publish", "none")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0, r.stderr
    assert "model.threads = True is invalid" in r.stderr


def test_max_peers_over_the_open_file_limit_is_one_line(tmp_path, media, port):
    """publish.max_peers past what the open-file limit read at start leaves (a quarter of it, less 64 files, per
    socket) is refused before anything listens: each peer takes a descriptor, and at the limit ZeroMQ could
    accept nobody."""
    import resource
    import subprocess
    import sys

    p = tmp_path / "c.toml"
    p.write_text("[publish]\nmax_peers = 100\n")
    r = subprocess.run([sys.executable, "-m", "actstream.cli", "replay", str(media["wav"]), "--config", str(p),
                        "--publish", f"tcp://127.0.0.1:{port}"], capture_output=True, text=True, timeout=120,
                       cwd=ROOT, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256)))
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("actstream: error: publish.max_peers = 100 is more than the open-file limit allows: "
                               "256 files (ulimit -n) leave room for 48 peers"), r.stderr
