"""Config values given on the command line and in files that users get wrong: one line naming the key, and the key
shown as it is (an invisible character, a line break, an escape code), never acted on or passed off as another."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from streamfuse.checks import yaml_value
from streamfuse.config import ConfigError, config_from_dict, dump_config, load_config
from streamfuse.evaluation import fuser_method


def _write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("value, why", [("[", "the value is not valid YAML (expected the node content"),
                                        ("*a", "the value is not valid YAML (found undefined alias 'a'"),
                                        ("0x_", "'0x_' is not a number this reader takes")])
def test_a_fuser_s_inline_value_that_is_no_yaml_is_one_line(value, why):
    # it was PyYAML's traceback ("[", "*a") or int()'s error naming no key ("0x_")
    with pytest.raises(ConfigError) as exc:
        fuser_method(f"max:sharpen={value}")
    assert str(exc.value).startswith(f"--fuser max:sharpen={value}: sharpen: {why}") and "\n" not in str(exc.value)


def test_an_override_value_no_reader_takes_names_the_override(tmp_path):
    with pytest.raises(ConfigError) as exc:
        load_config(_write(tmp_path, "{}\n"), ["ir.seed=0x_"])
    assert str(exc.value) == "override 'ir.seed=0x_': '0x_' is not a number this reader takes"


@pytest.mark.parametrize("value, said", [("0x_", "'0x_' is not a number this reader takes"),
                                         ("9" * 5000, "...99999999999999999999999999999999999999' is not a number"),
                                         ("2024-13-01", "'2024-13-01' is not a date"),
                                         ("!!bool maybe", "'maybe' is not a boolean"),
                                         ("!!float", "'' is not a number this reader takes")])
def test_a_value_in_a_file_that_no_reader_takes_names_its_line(value, said, tmp_path):
    # an integer of thousands of digits was said without its line; `!!float` or `!!bool maybe` was a traceback
    path = _write(tmp_path, f"ir:\n  fps: 25\n  seed: {value}\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    message = str(exc.value)
    assert message.startswith(f"{path}: ") and said in message and "\n" not in message
    assert message.endswith(", line 3, column 9")


def test_a_tagged_mapping_that_no_reader_takes_is_one_line(tmp_path):
    with pytest.raises(ConfigError) as exc:  # PyYAML builds a mapping's contents after the node: no line to give
        load_config(_write(tmp_path, "ir: !!map x\n"))
    assert str(exc.value).endswith(": a tagged value this reader cannot read (ValueError)")


def test_an_empty_record_section_is_said_and_an_override_fills_it(tmp_path, caplog):
    # `record:` uncommented without its path recorded nothing without a word, and --set record.path= was refused
    path = _write(tmp_path, "record:\n")
    with caplog.at_level(logging.WARNING, "streamfuse.config"):
        assert load_config(path).record is None
    assert f"{path}: section record is empty: nothing is recorded (give record.path)" in caplog.text
    assert load_config(path, [f"record.path={tmp_path / 'r.mcap'}"]).record.path == str(tmp_path / "r.mcap")


def test_an_empty_stage_section_is_refused_naming_it_and_an_override_fills_it(tmp_path):
    # `sync:` with every key commented out: unlike record, a stage every run has; taken as no section, the run
    # failed later without naming the key
    path = _write(tmp_path, "ir:\n  fps: 25\nsync:\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert str(exc.value) == f"{path}: section sync is empty"
    assert load_config(path, ["sync.slop_ms=12.5"]).sync.slop_ms == 12.5


def test_a_dumped_config_without_recording_reads_back_without_a_warning(tmp_path, caplog):
    dump_config(load_config(_write(tmp_path, "{}\n")), tmp_path / "resolved.yaml")
    assert "record" not in (tmp_path / "resolved.yaml").read_text()
    with caplog.at_level(logging.WARNING, "streamfuse.config"):
        assert load_config(tmp_path / "resolved.yaml").record is None
    assert not caplog.text


@pytest.mark.parametrize("key", ["replay.frames_dir", "replay.out", "hclfuse.weights", "publish.curve_secret_file"])
def test_a_number_is_no_file_name(key, tmp_path):
    # replay.frames_dir=0 (meaning off) wrote every frame into a folder named 0; replay.out=0 made a live run a replay
    with pytest.raises(ConfigError) as exc:
        load_config(_write(tmp_path, "{}\n"), [f"{key}=0"])
    assert f'{key}=0 has the wrong type; expected str (quote it: "0")' in str(exc.value)


def test_a_camera_index_is_still_a_path(tmp_path):
    assert config_from_dict({"ir": {"kind": "camera", "path": 0}}).ir.path == "0"


@pytest.mark.parametrize("value", ["no", "on", "1.10"])
def test_text_read_as_a_boolean_or_float_is_not_quoted_back_as_another(value, tmp_path):
    # `frame_id: no` said (quote it: "False"), `1.10` said "1.1"
    with pytest.raises(ConfigError) as exc:
        load_config(_write(tmp_path, "{}\n"), [f"ir.frame_id={value}"])
    assert str(exc.value).endswith("expected str (YAML reads it as a boolean or a number: write it in quotes)")


def test_an_override_below_a_value_that_is_no_section_is_one_line_naming_it(tmp_path):
    # `--set ir.fps.max=30` where ir.fps is a number, or any key under `ir: 3`: an AttributeError or TypeError
    # traceback, naming neither the override nor the key
    with pytest.raises(ConfigError) as exc:
        load_config(_write(tmp_path, "ir:\n  fps: 25\n"), ["ir.fps.max=30"])
    assert str(exc.value) == "override ir.fps.max: fps is not a section"
    with pytest.raises(ConfigError) as exc:
        load_config(_write(tmp_path, "ir: 3\n"), ["ir.fps=30"])
    assert str(exc.value) == "override ir.fps: ir is not a section"


def test_an_override_key_is_trimmed(tmp_path):
    assert load_config(_write(tmp_path, "{}\n"), ["ir.fps =12", " vis. fps=9"]).ir.fps == 12


@pytest.mark.parametrize("key, seen", [("fps\u00a0", "'fps\\xa0'"), ("f\nps", "'f\\nps'"),
                                       ("\x1b[31mred", "'\\x1b[31mred'"), ("k" * 500, "'kkkk"),
                                       ("f\u0440s", "'f\u0440s'")])  # a Cyrillic look-alike of p: quoted
def test_an_unknown_key_is_shown_quoted_and_cut_short(key, seen, tmp_path):
    with pytest.raises(ConfigError) as exc:
        config_from_dict({"ir": {key: 1}})
    line = str(exc.value)
    assert f"unknown config key ir.{seen}" in line and "\n" not in line and "\x1b" not in line and len(line) < 400
    with pytest.raises(ConfigError) as exc:
        config_from_dict({key: {}})
    assert f"unknown config key {seen}" in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize("kind", ["folder", "pipe"])
def test_a_folder_or_pipe_named_without_a_folder_is_not_taken_for_a_missing_config(kind, tmp_path, monkeypatch):
    # `--config adir` and `--config fifo.yaml` said "no such config file here, nor a shipped config of that name"
    import os

    from streamfuse.configs import resolve

    monkeypatch.chdir(tmp_path)
    os.mkdir("adir") if kind == "folder" else os.mkfifo("fifo.yaml")
    name = "adir" if kind == "folder" else "fifo.yaml"
    assert resolve(name) == Path(name)
    if kind == "folder":
        with pytest.raises(ConfigError, match="^adir: is a folder, not a config file$"):
            load_config(resolve(name))
    os.mkdir("demo")
    assert resolve("demo").parent.name == "configs"  # a folder of a shipped config's name does not win


def test_a_file_of_comments_only_or_an_empty_name_is_said_so(tmp_path):
    # "top level must be a mapping of stage sections", and `--config ""` was ".: is a folder"
    from streamfuse.configs import resolve

    with pytest.raises(ConfigError, match=r"the config file holds only comments \(write `\{\}` to run on every "):
        load_config(_write(tmp_path, "# fuse:\n#   name: max\n"))
    with pytest.raises(ConfigError, match=r"^config '' is empty: give a shipped config's name \(.*demo"):
        resolve("")


@pytest.mark.parametrize("endpoint", ["tcp://:6401", "tcp://[::1:6402", "tcp://no such host:6403", "ipc://",
                                      "tcp://[]:6404", "ipc://  ", "inproc:// "])
def test_an_endpoint_without_a_usable_address_is_refused_at_load(endpoint):
    # they passed the check and failed at bind with libzmq's "No such device"
    with pytest.raises(ConfigError) as exc:
        config_from_dict({"publish": {"endpoint": endpoint}})
    assert f"publish: endpoint={endpoint!r} is out of range; allowed: tcp://HOST:PORT" in str(exc.value)


@pytest.mark.parametrize("endpoint", ["tcp://*:6405", "tcp://[::1]:6406", "tcp://lo:6407", "ipc:///tmp/x",
                                      "inproc://a"])
def test_endpoints_of_every_form_still_load(endpoint):
    assert config_from_dict({"publish": {"endpoint": endpoint}}).publish.endpoint == endpoint


@pytest.mark.parametrize("raw, said", [({"fuze": {}}, "unknown config key fuze (did you mean fuse?); allowed keys: "),
                                       ({"ir": {"widht": 64}}, "unknown config key ir.widht (did you mean width?); "),
                                       ({"ir": {"colour": 1}}, "unknown config key ir.colour; allowed keys: "),
                                       ({"sync": {"fps": 5}}, "sync.fps (did you mean ir.fps or vis.fps?); "),
                                       ({"ir": {"slop_ms": 5}}, "ir.slop_ms (did you mean sync.slop_ms?); "),
                                       ({"ir": {"weights": "a.pt"}}, "ir.weights (did you mean hclfuse.weights?); "),
                                       ({"ir": {"FPS": 25}}, "unknown config key ir.FPS (did you mean fps?); "),
                                       ({"ir": {"fsp": 25}}, "unknown config key ir.fsp (did you mean fps?); "),
                                       ({"ir": {"fpx": 25}}, "unknown config key ir.fpx (did you mean fps?); "),
                                       ({"ir": {"kin": "file"}}, "unknown config key ir.kin (did you mean kind?); "),
                                       ({"ir": {"loops": 1}}, "unknown config key ir.loops (did you mean loop?); "),
                                       ({"fps": 5}, "unknown config key fps (did you mean ir.fps or vis.fps?); "),
                                       # a pasted no-break space: the section's own key, not ir's or vis's
                                       ({"publish": {"topic\xa0": "x"}}, "'topic\\xa0' (did you mean topic?); "),
                                       ({"sync": {"fps\xa0": 5}}, "'fps\\xa0' (did you mean ir.fps or vis.fps?); ")])
def test_a_misspelt_key_gets_the_nearest_name(raw, said):
    with pytest.raises(ConfigError) as exc:
        config_from_dict(raw)
    assert said in str(exc.value)


def test_a_refusal_of_the_whole_config_names_the_overrides_too(tmp_path):
    # the file was blamed for what an override made of it
    from streamfuse.pipeline import run

    path = _write(tmp_path, "{}\n")
    with pytest.raises(ConfigError) as exc:
        run(load_config(path, ["ir.kind=file", "sync.slop_ms=5"]))
    assert str(exc.value).startswith(f"{path} with --set ir.kind=file: ir.path is empty: a file source needs one")
    with pytest.raises(ConfigError) as exc:  # an override of other keys is not named
        run(load_config(_write(tmp_path, "ir:\n  kind: file\n"), ["sync.slop_ms=5"]))
    assert str(exc.value).startswith(f"{path}: ir.path is empty")
    with pytest.raises(ConfigError) as exc:  # nor one of another source
        run(load_config(_write(tmp_path, "{}\n"), ["vis.kind=folder", "ir.fps=5", "--vis={kind: folder}"]))
    assert str(exc.value).startswith(f"{path} with --set vis.kind=folder --vis={{kind: folder}}: vis.path is empty")


def test_an_override_inside_a_section_named_whole_is_named():
    replay = Path(__file__).parent.parent / "streamfuse/configs/replay.yaml"
    cfg = load_config(replay, ["record.path=x.mcap", "ir.fps=5"])
    assert cfg.origin("record").endswith("replay.yaml with --set record.path=x.mcap")


def test_an_override_holding_bytes_that_are_not_utf8_is_read_around_them(tmp_path):
    # a file name's bytes that are not UTF-8 (any non-ASCII one under LC_ALL=C) come as lone surrogates: YAML refused
    # them ("unacceptable character #xdcff"), so no such folder or file could be named on the command line
    cfg = load_config(_write(tmp_path, "{}\n"), ["replay.frames_dir=bad\udcff\udcfe/frames",
                                                 "ir.ffmpeg=[fflags=nobuffer, title=\udce7\udca9\udcba]"])
    assert cfg.replay.frames_dir == "bad\udcff\udcfe/frames"
    assert cfg.ir.ffmpeg == ("fflags=nobuffer", "title=空")


def test_text_given_as_its_bytes_is_read_as_utf8_and_only_a_path_may_hold_other_bytes(tmp_path):
    # under LC_ALL=C with PYTHONUTF8=0 `--set publish.topic=fused/空` comes as the bytes' escapes: they were sent on as
    # they were, and a topic or frame id of bytes that are no UTF-8 failed only as the publisher or recorder began
    cfg = load_config(_write(tmp_path, "{}\n"), ["publish.topic=fused/\udce7\udca9\udcba"])
    assert cfg.publish.topic == "fused/空"
    with pytest.raises(ConfigError, match=r"vis\.frame_id='cam\\udcff' holds bytes that are not UTF-8 text"):
        load_config(_write(tmp_path, "{}\n"), ["vis.frame_id=cam\udcff"])


def test_an_override_naming_a_file_with_control_characters_keeps_them(tmp_path):
    # a name holding an escape or DEL was refused ("unacceptable character #x001b: special characters are not allowed")
    cfg = load_config(_write(tmp_path, "{}\n"), ["replay.frames_dir=red\x1b[31m\x7f\udcff/frames"])
    assert cfg.replay.frames_dir == "red\x1b[31m\x7f\udcff/frames"


@pytest.mark.parametrize("brk", ["\n", "\n\n", "\r\n", "\x85", "\u2028"])
def test_an_override_naming_a_file_with_a_line_break_keeps_it_exactly(tmp_path, brk):
    # YAML folded it: record.path=runs/a<newline>b.mcap recorded to 'runs/a b.mcap', a path the user never gave
    path = f"runs/a{brk}  b{brk}.mcap"
    cfg = load_config(_write(tmp_path, "{}\n"), [f"record.path={path}", f"replay.frames_dir=\"{path}\""])
    assert (cfg.record.path, cfg.replay.frames_dir) == (path, path)


def test_an_override_with_a_line_break_inside_a_list_or_block_yaml_is_one_line_refusal(tmp_path):
    # ir.ffmpeg=[a,<newline>b] would be ['a', 'b'] to YAML and ['a', '\nb'] kept as given: neither is taken silently
    with pytest.raises(ConfigError, match=r"a line break is kept as given in a text value alone .*; give a list or "
                                          r"mapping on one line$"):
        load_config(_write(tmp_path, "{}\n"), ["ir.ffmpeg=[fflags=nobuffer,\n probesize=32]"])
    with pytest.raises(ConfigError, match=r"not valid YAML \(expected chomping or indentation indicators, but found "
                                          r"'\\n', line 1, column 2\)$") as err:  # the character, not its stand-in
        load_config(_write(tmp_path, "{}\n"), ["record.path=|\n  x.mcap"])
    assert "\n" not in str(err.value)


def test_an_alias_bomb_holding_a_control_character_is_read_without_walking_its_billion_items():
    bomb = "[\x1b, x, x, x, x, x, x, x, x]"
    for name in "abcdefghi":
        bomb = f"[&{name} {bomb}, " + ", ".join([f"*{name}"] * 8) + "]"
    assert yaml_value(bomb, "--set ir.fps")[0][0][0][0][0][0][0][0][0][0] == "\x1b"


@pytest.mark.parametrize("char", ["\x01", "\x08", "\x0b", "\x1b", "\x1e", "\x1f", "\x7f", "\x9f"],
                         ids=lambda c: f"{ord(c):#04x}")
def test_an_override_naming_a_file_with_any_control_character_keeps_it_exactly(tmp_path, char):
    # each control character YAML refuses is read around, the unit separator 0x1f, the range's last, as well
    path = f"runs/a{char}b.mcap"
    cfg = load_config(_write(tmp_path, "{}\n"), [f"record.path={path}", f"replay.frames_dir=\"{path}\""])
    assert (cfg.record.path, cfg.replay.frames_dir) == (path, path)


@pytest.mark.parametrize("key", ["publish.frame_id", "vis.frame_id", "ir.frame_id"])
def test_a_frame_id_too_long_for_a_header_consumers_take_is_refused(tmp_path, key):
    # a frame id of 70,000 characters ran: every frame it published had a header over 64 KiB, which every consumer
    # refused as malformed, while the run counted them published
    path = _write(tmp_path, "{}\n")
    assert load_config(path, [f"{key}={'f' * 1000}"])
    with pytest.raises(ConfigError, match=r"frame_id='fff.*' is out of range; allowed: at most 1000 characters"):
        load_config(path, [f"{key}={'f' * 70_000}"])
