import dataclasses

import pytest

from stream.config import Config, load_config
from stream.errors import ConfigError
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
