from pathlib import Path

import dataclasses
import os
import re
import subprocess

import pytest
import yaml

from streamfuse.checks import apply_overrides, load_yaml, parse_section, tcp_port_ok
from streamfuse.config import MOVED, ConfigError, absolute_paths, config_from_dict, dump_config, load_config
from streamfuse.configs import CONFIG_DIR, resolve

CONFIGS = Path(__file__).resolve().parents[1] / "streamfuse" / "configs"


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_shipped_configs_load_and_round_trip(name, tmp_path):
    cfg = load_config(CONFIGS / name)
    dump_config(cfg, tmp_path / "resolved.yaml")
    assert load_config(tmp_path / "resolved.yaml") == cfg


def test_a_dumped_config_lists_its_sections_in_data_flow_order(tmp_path):
    """The resolved config a run writes reads top to bottom as the data flows: the order given, not sorted."""
    cfg = load_config(CONFIGS / "demo.yaml")
    dump_config(cfg, tmp_path / "resolved.yaml")
    lines = (tmp_path / "resolved.yaml").read_text().splitlines()
    assert [line.rstrip(":") for line in lines if line[:1].isalpha()] == [k for k, v in cfg.to_dict().items() if v]


def _write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "text, message",
    [
        ("fuse:\n  stepz: 4\n", "unknown config key fuse.stepz; allowed keys: name"),
        ("hclfuse:\n  stepz: 4\n",
         "unknown config key hclfuse.stepz (did you mean steps?); allowed keys: weights, sampler, steps"),
        ("fusion:\n  steps: 4\n", "unknown config key fusion; allowed keys: ir, vis, sync, register, stabilize, align"),
        ("hclfuse:\n  steps: four\n", "hclfuse.steps='four' has the wrong type; expected int"),
        ("hclfuse:\n  steps: [4, 8]\n",  # a stray word after a flag's value (train's --steps 4 8) makes a list
         "hclfuse.steps=[4, 8] has the wrong type; expected int (2 values given where it takes one)"),
        ("hclfuse:\n  steps: 40\n", "hclfuse: steps=40 is out of range; allowed: 1..20"),
        ("stabilize:\n  strength: 1.0\n", "stabilize: strength=1.0 is out of range; allowed: 0 (off) .. 0.95"),
        ("engine:\n  device: gpu\n", "engine: device='gpu' is out of range"),
        ("baseline:\n  contrast: 0\n", "baseline: contrast=0.0 is out of range"),
        ("sync:\n  mode: nearest\n", "sync.mode='nearest' is not one of 'slop' | 'latest'"),
        ("align:\n  method: sinkhorn_lg\n",  # it was "has the wrong type": the type was right, the word misspelt
         "align.method='sinkhorn_lg' is not one of 'sinkhorn_log' | 'sinkhorn' (did you mean 'sinkhorn_log'?)"),
        ("publish:\n  endpoint: 5555\n", 'publish.endpoint=5555 has the wrong type; expected str (quote it: "5555")'),
        ("publish:\n  endpoint: tcp://127.0.0.1:99999\n",  # libzmq would bind port 34463
         "publish: endpoint='tcp://127.0.0.1:99999' is out of range; allowed: tcp://HOST:PORT (PORT 1..65535"),
        ("record:\n  path:\n", "record.path has no value; expected str"),
        ("fuse: 3\n", "fuse=3 must be a mapping"),
        ("fuse: [\n", "not valid YAML"),
        ("ir:\n  kind: synthetic\n\tfps: 3\n",  # PyYAML's first line was only "while scanning for the next token"
         "not valid YAML (found character '\\t' that cannot start any token, line 3, column 1)"),
        ("engine:\n  threads: 100000\n", "engine: threads=100000 is out of range; allowed: 0 (all cores) .. 1024"),
        ("ir:\n  ffmpeg: fflags=nobuffer\n", "ir.ffmpeg='fflags=nobuffer' has the wrong type; expected list of str"),
        ("ir:\n  ffmpeg: [fflags=nobuffer, 5]\n", "ir.ffmpeg[1]=5 has the wrong type; expected str"),
        # FFmpeg read the option up to its NUL: a file's fflags=nobuffer went through, losing its first frames
        ('ir:\n  kind: file\n  ffmpeg: ["fflags=nobuffer\\0+genpts"]\n',
         "ir: ffmpeg option 'fflags=nobuffer\\x00+genpts' holds a NUL character: FFmpeg would read it only up to "
         "there"),
        # libzmq takes a port modulo 65536: 65536 would bind any free port, and a client would never find it
        ("publish:\n  endpoint: tcp://127.0.0.1:65536\n",
         "publish: endpoint='tcp://127.0.0.1:65536' is out of range; allowed: tcp://HOST:PORT (PORT 1..65535"),
        # `fps: yes` (YAML 1.1's true) taken for 1.0 would time every frame a second apart
        ("ir:\n  fps: true\n", "ir.fps=True has the wrong type; expected float"),
        # `steps: yes` taken for 1 would sample once instead of refusing the config
        ("hclfuse:\n  steps: true\n", "hclfuse.steps=True has the wrong type; expected int"),
        # a visible camera's colours mapped back as temperatures would garble every visible frame
        ("vis:\n  palette: black_hot\n", "vis.palette='black_hot': a palette is the IR camera's (ir.palette)"),
        ("record:\n  path: rig.mcap\n  flush_s: 3601\n",
         "record: flush_s=3601.0 is out of range; allowed: 0.01..3600 s"),
    ],
)
def test_bad_configs_name_file_and_key(tmp_path, text, message):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    line = str(err.value)
    assert "\n" not in line and line.startswith(str(path)) and message in line


def test_a_camera_index_is_a_path_written_as_a_number(tmp_path):
    # `path: 0` is how a webcam's index is written in YAML and in --set; it names the device, as "0" does
    cfg = load_config(_write(tmp_path, "ir:\n  kind: camera\n  path: 0\n"), ["vis.kind=camera", "vis.path=2"])
    assert (cfg.ir.path, cfg.vis.path) == ("0", "2")
    with pytest.raises(ConfigError, match="ir.path=-1 has the wrong type; expected str"):
        load_config(_write(tmp_path, "ir:\n  kind: camera\n  path: -1\n"))


def test_a_boolean_source_path_is_a_type_error_not_a_device_index():
    # `path: yes` is no camera index: only a whole number is read as the text it is
    with pytest.raises(ConfigError, match="ir.path=True has the wrong type; expected str"):
        config_from_dict({"ir": {"kind": "camera", "path": True}})


def test_missing_file():
    with pytest.raises(ConfigError, match="config file not found"):
        load_config("no/such/config.yaml")


def test_a_shipped_config_is_loaded_by_its_name_as_the_commands_take_it():
    # load_config("demo") in a program of one's own said "demo: config file not found", though --config demo runs
    cfg = load_config("demo", ["fuse.name=max"])
    assert Path(cfg.source_file) == CONFIG_DIR / "demo.yaml"
    assert cfg.fuse.name == "max"
    with pytest.raises(ConfigError, match="^nosuch: no such config file here, nor a shipped config of that name"):
        load_config("nosuch")


def test_the_teachers_steps_set_for_the_student_are_warned_of(tmp_path, caplog):
    """A comparison of K with the student sampler compares nothing: say so where the setting is made."""
    path = _write(tmp_path, "hclfuse:\n  sampler: student\n")
    with caplog.at_level("WARNING", logger="streamfuse.config"):
        load_config(path, ["hclfuse.steps=20"])  # the default: a resolved config says it, and means nothing more
        load_config(path, ["hclfuse.sampler=teacher", "hclfuse.steps=4"])
        assert not caplog.records
        load_config(path, ["hclfuse.steps=4"])
    assert caplog.messages == [f"{path} with --set hclfuse.steps=4: hclfuse.steps=4 sets the teacher's steps; the "
                               "student sampler takes one (add hclfuse.sampler=teacher)"]


def test_a_warning_names_the_set_items_that_gave_its_values_and_the_file_alone_for_its_own(tmp_path, caplog):
    """A value given by --set was warned of under the file's name alone: the user looked in the file for it."""
    path = _write(tmp_path, "hclfuse:\n  sampler: student\n  guidance: false\n  image_guidance: 3\n"
                            "record:\n")
    with caplog.at_level("WARNING", logger="streamfuse.config"):
        load_config(path, ["fuse.name=max"])  # the file's own values: the file alone
        load_config(path, ["hclfuse.steps=4", "fuse.name=max", "record=", "hclfuse.image_guidance=0"])
    assert caplog.messages == [
        f"{path}: section record is empty: nothing is recorded (give record.path)",
        f"{path}: hclfuse.guidance=false turns the guides off, and with them hclfuse.image_guidance=3 (add "
        "hclfuse.guidance=true)",
        f"{path} with --set record=: section record is empty: nothing is recorded (give record.path)",
        f"{path} with --set hclfuse.steps=4: hclfuse.steps=4 sets the teacher's steps; the student sampler takes one "
        "(add hclfuse.sampler=teacher)"]


def test_the_guides_settings_with_guidance_off_are_warned_of(tmp_path, caplog):
    """hclfuse.guidance=false drops the guides, their scale and the image guide's steps: a run given those with the
    guides off fuses exactly as without them, and must say so."""
    path = _write(tmp_path, "hclfuse:\n  guidance: false\n")
    with caplog.at_level("WARNING", logger="streamfuse.config"):
        load_config(path, ["hclfuse.guidance_scale=1.0", "hclfuse.image_guidance=0"])  # the defaults: nothing said
        load_config(path, ["hclfuse.guidance=true", "hclfuse.image_guidance=3"])
        assert not caplog.records
        load_config(path, ["hclfuse.guidance_scale=5", "hclfuse.image_guidance=3"])
    assert caplog.messages == [f"{path} with --set hclfuse.guidance_scale=5 hclfuse.image_guidance=3: "
                               "hclfuse.guidance=false turns the guides off, and with them hclfuse.guidance_scale=5.0, "
                               "image_guidance=3 (add hclfuse.guidance=true)"]


def test_ffmpeg_options_ffmpeg_has_no_name_for_are_warned_of(tmp_path, caplog):
    """FFmpeg leaves an option it has no name for unused without a word (PyAV frees what is left): a misspelt
    rtsp_transport left a camera on UDP, a misspelt fflags=nobuffer its buffering on, unsaid."""
    path = _write(tmp_path, "vis:\n  kind: stream\n  path: rtsp://cam/stream1\n")
    with caplog.at_level("WARNING", logger="streamfuse.config"):
        load_config(path, ["vis.ffmpeg=[rtsp_transport=udp, fflags=nobuffer, rw_timeout=5000000, threads=2]"])
        load_config(path, ["ir.ffmpeg=[rtsp_transprot=tcp]"])  # a synthetic source's: FFmpeg never sees them
        assert not caplog.records
        load_config(path, ["vis.ffmpeg=[rtsp_transprot=tcp, fflags=nobuffer, stimeout=5000000]"])
    assert caplog.messages == [f"{path} with --set vis.ffmpeg=[rtsp_transprot=tcp, fflags=nobuffer, stimeout=5000000]:"
                               " vis.ffmpeg: FFmpeg has no option named rtsp_transprot, stimeout (misspelt, or another "
                               "version's?): left unused"]


def test_an_ffmpeg_option_given_twice_is_warned_of_once(tmp_path, caplog):
    # fflags=+genpts, fflags=nobuffer: only the last was taken, the first dropped without a word
    path = _write(tmp_path, "vis:\n  kind: stream\n  path: rtsp://cam/stream1\n")
    with caplog.at_level("WARNING", logger="streamfuse.config"):
        load_config(path, ["vis.ffmpeg=[fflags=+genpts, probesize=32, fflags=nobuffer, fflags=+igndts, probesize=64]"])
    given = "vis.ffmpeg=[fflags=+genpts, probesize=32, fflags=nobuffer, fflags=+igndts, probesize=64]"
    assert caplog.messages == [f"{path} with --set {given}: vis.ffmpeg: fflags, probesize given more than once: only "
                               "the last of each is taken (fflags=+igndts, probesize=64)"]


def test_ffmpeg_options_nothing_that_reads_a_file_takes_are_warned_of_for_a_file(tmp_path, caplog):
    """A network stream's option given to a file (rtsp_transport, an http one) is an option FFmpeg has, so it passed
    unsaid, and was left unused; a stream's options pass on to the protocols it opens beneath it, and are not asked."""
    path = _write(tmp_path, "vis:\n  kind: file\n  path: clip.mp4\n")
    with caplog.at_level("WARNING", logger="streamfuse.config"):
        load_config(path, ["vis.ffmpeg=[fflags=+genpts, probesize=32, err_detect=explode, threads=2, follow=1, "
                           "rw_timeout=5000000, cryptokey=00]"])  # the format's, a decoder's, file's, a demuxer's
        load_config(path, ["vis.kind=stream", "vis.path=http://cam/video", "vis.ffmpeg=[user_agent=x, "
                           "listen_timeout=5]"])
        assert not caplog.records
        load_config(path, ["vis.ffmpeg=[rtsp_transport=tcp, threads=2, user_agent=x, rtsp_transprot=tcp]"])
    where = f"{path} with --set vis.ffmpeg=[rtsp_transport=tcp, threads=2, user_agent=x, rtsp_transprot=tcp]"
    assert caplog.messages == [
        f"{where}: vis.ffmpeg: FFmpeg has no option named rtsp_transprot (misspelt, or another version's?): left "
        "unused",
        f"{where}: vis.ffmpeg: rtsp_transport, user_agent: no FFmpeg format, protocol or codec that reads a file has "
        "it (a network stream's, or a device's): left unused"]


def test_overrides_are_parsed_and_validated(tmp_path):
    path = _write(tmp_path, "hclfuse:\n  steps: 4\n")
    cfg = load_config(path, ["hclfuse.steps=2", "--sync.slop_ms=12.5", "ir.kind=synthetic"])
    assert cfg.hclfuse.steps == 2 and cfg.sync.slop_ms == 12.5
    with pytest.raises(ConfigError, match="unknown config key hclfuse.nope"):
        load_config(path, ["hclfuse.nope=1"])
    with pytest.raises(ConfigError, match="not of the form stage.key=value"):
        load_config(path, ["hclfuse.steps"])
    with pytest.raises(ConfigError, match=r"replay.out=\[None\] has the wrong type; expected str \(YAML reads a "
                                          r"value starting with - or \[ as a list: write it in quotes\)$"):
        load_config(path, ["replay.out=-"])  # a dash (standard output, to many tools): a list of one, not "1 values"
    with pytest.raises(ConfigError, match=r"override 'hclfuse.steps=\[1': the value is not valid YAML") as err:
        load_config(path, ["hclfuse.steps=[1"])
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="top level must be a mapping"):  # overwrites the file
        load_config(_write(tmp_path, "- fuse\n"), ["hclfuse.steps=2"])


def test_an_override_value_keeps_every_equals_sign_after_the_key(tmp_path):
    # a camera URL's query (`?channel=1&subtype=0`) cut at its second '=' would open another stream, or none
    url = "rtsp://cam.local/live?channel=1&subtype=0"
    cfg = load_config(_write(tmp_path, "{}\n"), [f"vis.path={url}", "ir.kind=synthetic"])
    assert cfg.vis.path == url


@pytest.mark.parametrize("text", ["1e-3", "-2e5", "1E3", "1.5e3", "+2.5E-2"])
def test_exponent_numbers_are_floats_in_overrides_and_files(tmp_path, text):
    # PyYAML's YAML 1.1 resolver reads these as strings; the configs' loader reads them as YAML 1.2 does
    assert apply_overrides({}, [f"align.tol={text}"]) == {"align": {"tol": float(text)}}
    assert apply_overrides({}, [f"a.b='{text}'"]) == {"a": {"b": text}}  # quoted stays a string
    assert load_yaml(f"align:\n  tol: {text}\n") == {"align": {"tol": float(text)}}  # the configs' file loader
    assert load_config(_write(tmp_path, "sync:\n  slop_ms: 1.5e3\n")).sync.slop_ms == 1500.0


@pytest.mark.parametrize("text, value", [("010", 10), ("007", 7), ("0o17", 15), ("0x1F", 31), ("1_000", 1000),
                                         ("-5", -5), ("-.5", -0.5), ("1:30", "1:30"), ("1:30.5", "1:30.5"),
                                         ("0b101", "0b101")])
def test_numbers_are_read_as_yaml_1_2_reads_them(text, value):
    # YAML 1.1 (PyYAML's) reads 010 as octal 8, 1:30 as sexagesimal 90 and 0b101 as 5: no user writing a config means it
    for data in (load_yaml(f"a:\n  b: {text}\n"), apply_overrides({}, [f"a.b={text}"])):
        assert data == {"a": {"b": value}} and type(data["a"]["b"]) is type(value)


def test_merge_keys_share_settings_and_the_mapping_merged_into_wins(tmp_path):
    text = "ir: &cam {kind: synthetic, fps: 25, width: 320, height: 240}\nvis:\n  <<: *cam\n  fps: 30\n"
    cfg = load_config(_write(tmp_path, text))
    assert (cfg.ir.fps, cfg.vis.fps, cfg.vis.width, cfg.vis.height) == (25, 30, 320, 240)
    with pytest.raises(ConfigError, match="key 'fps' is given twice"):  # still refused among the mapping's own keys
        load_config(_write(tmp_path, text + "  fps: 31\n"))


def test_a_written_config_reads_back_as_it_was(tmp_path):
    # text that a reader takes for a number is written quoted, by either reader's rules
    cfg = load_config(CONFIGS / "demo.yaml", ["ir.path='1e5'", "vis.path='1:30'", "publish.topic='0o17'"])
    dump_config(cfg, tmp_path / "resolved.yaml")
    assert load_config(tmp_path / "resolved.yaml") == cfg
    assert yaml.safe_load((tmp_path / "resolved.yaml").read_text())["vis"]["path"] == "1:30"


@pytest.mark.parametrize("old, new", sorted(MOVED.items()))
def test_keys_of_the_earlier_layout_name_their_new_place(tmp_path, old, new):
    section, key = old.split(".")
    new_section, new_key = new.split(".")
    value = dataclasses.asdict(getattr(config_from_dict({}), new_section))[new_key]  # a valid value, the default
    for how in ("file", "override"):
        path = _write(tmp_path, f"{section}: {{{key}: {value!r}}}\n" if how == "file" else "{}\n")
        with pytest.raises(ConfigError) as err:
            load_config(path, [] if how == "file" else [f"{old}={value!r}"])
        blamed = path if how == "file" else f"override of {path}"  # an override's fault is not the file's
        assert str(err.value) == f"{blamed}: {old} moved to {new}"
    assert getattr(getattr(config_from_dict({new_section: {new_key: value}}), new_section), new_key) == value


def test_a_fault_of_its_own_an_override_makes_in_a_faulty_file_is_the_overrides(tmp_path):
    # the file's fault (jpeg_quality) is still there, but the first one the run meets is what --set gave
    path = _write(tmp_path, "publish: {jpeg_quality: 0}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, ["publish.sndhwm=0"])
    assert str(err.value) == f"override of {path}: publish: sndhwm=0 is out of range; allowed: 1..1000"
    with pytest.raises(ConfigError) as err:  # the file's own fault, the override left as it was: the file's
        load_config(path, ["publish.sndhwm=5"])
    assert str(err.value) == f"{path}: publish: jpeg_quality=0 is out of range; allowed: 1..100"


def test_a_faulty_override_leaves_each_warning_said_once_and_none_of_the_config_it_did_not_give(tmp_path, caplog):
    # working out whose the fault was built the file's config again: its empty record was said twice, and a warning of
    # the file's guidance, which the overrides had turned back on, was said of a config the run never had
    path = _write(tmp_path, "record:\nhclfuse: {guidance: false, guidance_scale: 3.0}\n")
    with caplog.at_level("WARNING", logger="streamfuse.config"), pytest.raises(ConfigError) as err:
        load_config(path, ["hclfuse.guidance=true", "vis.palette=jet"])
    assert str(err.value) == f"override of {path}: vis.palette='jet': a palette is the IR camera's (ir.palette)"
    assert caplog.messages == [f"{path}: section record is empty: nothing is recorded (give record.path)"]


def test_a_file_that_is_not_a_config_is_one_line(tmp_path, monkeypatch):
    cases = {"empty.yaml": b"", "blank.yaml": b"  \n", "binary.yaml": bytes([0xD6, 0x00, 0xFF]) * 10,
             "twice.yaml": b"fuse:\n  name: max\nfuse:\n  name: rule\n",
             "twice_in_section.yaml": b"hclfuse:\n  steps: 1\n  steps: 2\n"}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
    messages = {}
    for name in cases:
        with pytest.raises(ConfigError) as err:
            load_config(tmp_path / name)
        messages[name] = str(err.value)
    assert all(m.startswith(str(tmp_path)) and "\n" not in m for m in messages.values())
    assert "is empty" in messages["empty.yaml"] and "is empty" in messages["blank.yaml"]
    assert "not UTF-8" in messages["binary.yaml"]
    assert "key 'fuse' is given twice (first on line 1), line 3, column 1" in messages["twice.yaml"]
    assert "key 'steps' is given twice (first on line 2), line 3" in messages["twice_in_section.yaml"]
    assert load_config(_write(tmp_path, "{}\n")) == config_from_dict({})  # every default, said explicitly
    (tmp_path / "demo").mkdir()  # a folder of a shipped config's name does not hide it
    monkeypatch.chdir(tmp_path)
    assert resolve("demo") == CONFIG_DIR / "demo.yaml"
    with pytest.raises(ConfigError, match="is a folder, not a config file"):
        load_config(tmp_path / "demo")


def test_an_override_that_completes_the_file_is_not_blamed_on_it(tmp_path):
    path = _write(tmp_path, "hclfuse: {steps: 0}\n")  # out of range in the file, fixed by the override
    assert load_config(path, ["hclfuse.steps=2"]).hclfuse.steps == 2
    with pytest.raises(ConfigError, match=f"^{path}: hclfuse: steps=0"):
        load_config(path, ["fuse.name=max"])  # the file's own fault stays the file's


def test_record_section_is_optional():
    assert config_from_dict({}).record is None
    assert config_from_dict({"fuse": {"name": "max"}}).fuse.name == "max"


def test_a_path_starting_with_a_tilde_is_in_the_home_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = load_config(resolve("demo"), ["record.path=~/runs/rig.mcap", "replay.out=~/fused.mp4",
                                        "vis.path=~user-that-is-not/x.mp4", "publish.topic=~/not/a/path"])
    assert cfg.record.path == str(tmp_path / "runs" / "rig.mcap") and cfg.replay.out == str(tmp_path / "fused.mp4")
    assert cfg.vis.path == "~user-that-is-not/x.mp4" and cfg.publish.topic == "~/not/a/path"  # as a shell does


def test_only_relative_file_paths_are_made_absolute(tmp_path, monkeypatch):
    """A URL, a camera index and an unset path name no file of this folder; an absent record section stays absent."""
    monkeypatch.chdir(tmp_path)
    cfg = absolute_paths(config_from_dict({"ir": {"kind": "stream", "path": "rtsp://cam/live"},
                                           "vis": {"kind": "camera", "path": 0}, "replay": {"out": "fused.mp4"}}))
    assert (cfg.ir.path, cfg.vis.path, cfg.replay.out) == ("rtsp://cam/live", "0", str(tmp_path / "fused.mp4"))
    assert cfg.replay.frames_dir == "" and cfg.record is None


def _alias_bomb(levels: int = 9) -> str:
    """A YAML list of 9**levels items written in a few hundred bytes (each level nine aliases of the one below)."""
    value = "[x, x, x, x, x, x, x, x, x]"
    for name in "abcdefghijklmnop"[:levels]:
        value = f"[&{name} {value}, " + ", ".join([f"*{name}"] * 8) + "]"
    return value


@pytest.mark.parametrize("text", [f"ir:\n  fps: {_alias_bomb()}\n", f"ir: {_alias_bomb()}\n",
                                  "sync:\n  slop_ms: 1" + "0" * 400 + "\n", "a: " + "[" * 20000 + "]" * 20000 + "\n",
                                  "sync:\n  slop_ms: 1" + "0" * 5000 + "\n", f"ir:\n  path: {'x' * 5000}\n  fps: no\n",
                                  "sync:\n  slop_ms: 1" + "0" * 4000 + "\n"])
def test_a_hostile_config_is_one_short_line(tmp_path, text):
    # an alias bomb under a real key hung (its full text was built for the message), 400 digits for a float key were an
    # OverflowError traceback, 20,000 levels of nesting a RecursionError and 5,000 digits a ValueError naming no file;
    # 4,000 digits (an integer Python reads) are shown cut short, as 400 are
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path, text))
    message = str(err.value)
    assert message.startswith(str(tmp_path)) and "\n" not in message and len(message) < 600, message[:600]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_a_config_that_is_a_device_or_huge_is_refused_unread(tmp_path):
    # /dev/zero was read until memory ran out, a pipe that never ends (`--config <(yes)`) the same
    (tmp_path / "huge.yaml").write_text("# " + "x" * 2**20 + "\n{}\n")
    os.mkfifo(tmp_path / "endless")
    writer = subprocess.Popen(["sh", "-c", f"yes > {tmp_path / 'endless'}"])
    try:
        for path, said in ((Path("/dev/zero"), "a device, not a config file"),
                           (tmp_path / "huge.yaml", "over 1 MiB, not a config file"),
                           (tmp_path / "endless", "over 1 MiB, not a config file")):
            with pytest.raises(ConfigError, match=f"^{re.escape(str(path))}: {said}"):
                load_config(path)
    finally:
        writer.kill()
        writer.wait()


def test_a_config_of_exactly_the_size_limit_is_read(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("{}\n#" + "x" * (2**20 - 5) + "\n")  # 1 MiB to the byte: the limit is "over 1 MiB"
    assert path.stat().st_size == 2**20
    assert load_config(path) == config_from_dict({})


@pytest.mark.parametrize("override", ["post.denoise_threshold=1e308", "post.denoise_threshold=1e-300",
                                      "baseline.sharpen=.inf", "baseline.sharpen=1e308", "align.tol=.inf",
                                      "align.drift=.inf", "telemetry.window=99999999999999999999",
                                      "telemetry.interval_s=1e-300", "align.drift=inf", "post.denoise=nan"])
def test_values_that_pass_a_lower_bound_but_cannot_run_are_refused(override):
    # each was taken: a crash at the first frame (OverflowError, ZeroDivisionError), black frames, an OT solve that
    # stops at once, a stats line on every loop
    key = override.split("=")[0].split(".")[1]
    with pytest.raises(ConfigError, match=f"{key}=.* is out of range; allowed: "):
        load_config(resolve("demo"), [override])


def test_a_device_that_names_no_gpu_is_refused_at_load():
    # cuda:abc passed the load and failed when the engine started, status 1, naming neither key nor file
    with pytest.raises(ConfigError, match=r"engine: device='cuda:abc' is out of range; allowed: auto \| cpu \| cuda \| "
                                          r"cuda:N"):
        load_config(resolve("demo"), ["engine.device=cuda:abc"])
    assert load_config(resolve("demo"), ["engine.device=cuda:1"]).engine.device == "cuda:1"


@pytest.mark.parametrize("text", ["- fuse\n", "just text\n", "# only a comment\nnull\n"])
def test_overrides_of_a_file_that_is_no_mapping_name_the_file(tmp_path, text):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError, match=f"^{re.escape(str(path))}: top level must be a mapping of stage sections$"):
        load_config(path, ["fuse.name=max"])


def test_the_hclfuse_and_engine_sections_defaults_and_seed_range():
    from streamfuse.inference import EngineConfig, HCLFuseConfig

    assert HCLFuseConfig(seed=2**32 - 1).seed == 2**32 - 1  # any 32-bit seed (the CPU generator keeps 32 bits)
    with pytest.raises(ValueError, match=r"^seed=4294967296 is out of range"):
        HCLFuseConfig(seed=2**32)
    live = HCLFuseConfig()  # the live defaults: the student, guided, no decoded-image steps
    assert (live.sampler, live.guidance, live.guidance_scale, live.image_guidance) == ("student", True, 1.0, 0)
    engine = EngineConfig()
    assert (engine.device, engine.precision, engine.threads, engine.cuda_graphs) == ("auto", "fp32", 0, True)


def test_the_replay_sections_defaults_are_the_documented_ones():
    # README: crf "default 18" (visually lossless), preset "default veryfast"; every frame, as fast as possible, on
    # H.264, FFmpeg's threads, decoding and encoding overlapped, a progress bar
    replay = config_from_dict({}).replay
    assert (replay.crf, replay.preset, replay.codec, replay.pacing) == (18, "veryfast", "h264", "fast")
    assert (replay.codec_threads, replay.overlap, replay.progress) == (0, True, True)
    assert (replay.out, replay.frames_dir, replay.publish, replay.resume) == ("", "", False, False)


@pytest.mark.parametrize("given", [
    {"steps": 1}, {"steps": 20}, {"guidance_scale": 0.0}, {"guidance_scale": 10.0}, {"image_guidance": 20},
    {"sampler": "teacher"}, {"seed": 0}, {"threads": 1024}, {"device": "cuda"}, {"device": "cuda:999"},
    {"precision": "bf16"}], ids=lambda given: ",".join(f"{k}={v}" for k, v in given.items()))
def test_the_hclfuse_and_engine_bounds_are_taken(given):
    from streamfuse.inference import EngineConfig, HCLFuseConfig

    cls = EngineConfig if {"threads", "device", "precision"} & set(given) else HCLFuseConfig
    assert {k: getattr(cls(**given), k) for k in given} == given


@pytest.mark.parametrize("given", [
    {"steps": 0}, {"steps": 21}, {"guidance_scale": -0.5}, {"guidance_scale": 10.5}, {"image_guidance": -1},
    {"image_guidance": 21}, {"sampler": "ddim"}, {"seed": -1}, {"threads": -1}, {"threads": 1025},
    {"device": "cuda:1000"}, {"device": "cuda:1x"}, {"precision": "fp64"}],
    ids=lambda given: ",".join(f"{k}={v}" for k, v in given.items()))
def test_the_hclfuse_and_engine_values_just_past_a_bound_are_refused(given):
    from streamfuse.inference import EngineConfig, HCLFuseConfig

    cls = EngineConfig if {"threads", "device", "precision"} & set(given) else HCLFuseConfig
    [(key, value)] = given.items()
    with pytest.raises(ValueError, match=f"^{key}={re.escape(repr(value))} is out of range; allowed: "):
        cls(**given)


def test_only_a_bound_endpoint_may_leave_its_port_to_the_system():
    # a publisher binds tcp://*:* or :0 (any free port); a subscriber cannot connect to "any port"
    assert tcp_port_ok("tcp://*:*", bind=True) and tcp_port_ok("tcp://127.0.0.1:0", bind=True)
    assert not tcp_port_ok("tcp://127.0.0.1:*") and not tcp_port_ok("tcp://127.0.0.1:0")
    assert tcp_port_ok("tcp://127.0.0.1:1") and tcp_port_ok("tcp://127.0.0.1:65535", bind=True)


def test_a_port_written_in_other_digits_than_ascii_is_refused():
    # str.isdigit takes Arabic-Indic or full-width digits and int() reads them, libzmq does not
    assert not tcp_port_ok("tcp://127.0.0.1:\u0665\u0665\u0665\u0665")
    assert not tcp_port_ok("tcp://*:\uff15\uff15\uff15\uff15", bind=True)


@dataclasses.dataclass(frozen=True)
class _Optional:
    limit: int | None = None


def test_a_value_of_an_optional_key_may_be_either_type():
    """A union type takes a value of any of its members, not only of the first."""
    assert parse_section(_Optional, {"limit": None}, "demo") == _Optional(None)
    assert parse_section(_Optional, {"limit": 3}, "demo") == _Optional(3)
    with pytest.raises(ValueError, match=r"demo.limit='3' has the wrong type; expected int or NoneType"):
        parse_section(_Optional, {"limit": "3"}, "demo")
