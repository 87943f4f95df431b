from pathlib import Path

import pytest

from streamfuse.config import ConfigError, config_from_dict, dump_config, load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_shipped_configs_load_and_round_trip(name, tmp_path):
    cfg = load_config(CONFIGS / name)
    dump_config(cfg, tmp_path / "resolved.yaml")
    assert load_config(tmp_path / "resolved.yaml") == cfg


def _write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "text, message",
    [
        ("fuse:\n  stepz: 4\n", "unknown config key fuse.stepz; allowed keys: name, sharpen"),
        ("fusion:\n  steps: 4\n", "unknown config key fusion; allowed keys: ir, vis"),
        ("fuse:\n  steps: four\n", "fuse.steps='four' has the wrong type; expected int"),
        ("fuse:\n  steps: 40\n", "fuse: steps=40 is out of range; allowed: 1..20"),
        ("sync:\n  mode: nearest\n", "sync.mode='nearest' has the wrong type; expected 'slop' | 'latest'"),
        ("fuse: 3\n", "fuse=3 must be a mapping"),
        ("fuse: [\n", "not valid YAML"),
    ],
)
def test_bad_configs_name_file_and_key(tmp_path, text, message):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    line = str(err.value)
    assert "\n" not in line and line.startswith(str(path)) and message in line


def test_missing_file():
    with pytest.raises(ConfigError, match="config file not found"):
        load_config("no/such/config.yaml")


def test_overrides_are_parsed_and_validated(tmp_path):
    path = _write(tmp_path, "fuse:\n  steps: 4\n")
    cfg = load_config(path, ["fuse.steps=2", "--sync.slop_ms=12.5", "ir.kind=synthetic"])
    assert cfg.fuse.steps == 2 and cfg.sync.slop_ms == 12.5
    with pytest.raises(ConfigError, match="unknown config key fuse.nope"):
        load_config(path, ["fuse.nope=1"])
    with pytest.raises(ConfigError, match="not of the form stage.key=value"):
        load_config(path, ["fuse.steps"])
    with pytest.raises(ConfigError, match=r"override 'fuse.steps=\[1': the value is not valid YAML") as err:
        load_config(path, ["fuse.steps=[1"])
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="top level must be a mapping"):  # overwrites the file
        load_config(_write(tmp_path, "- fuse\n"), ["fuse.steps=2"])


def test_record_section_is_optional():
    assert config_from_dict({}).record is None
    assert config_from_dict({"fuse": {"name": "max"}}).fuse.name == "max"
