"""A camera's password (``rtsp://user:password@``, ``?token=``) reaches FFmpeg but no log line, error or written config;
it can come from the environment (``${NAME}`` in a path) instead of the config file."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import pytest

from streamfuse.capture.sources import SourceConfig, SourceError, open_source
from streamfuse.checks import ConfigError
from streamfuse.config import config_from_dict, dump_config, load_config

REPO = Path(__file__).resolve().parents[2]
SECRET, TOKEN = "s3cret-Pa55", "tok-9f8e7d"


@pytest.mark.timeout(90)
def test_a_cameras_password_from_the_environment_stays_out_of_the_log_and_the_error(monkeypatch, caplog, tmp_path):
    from streamfuse.pipeline import run_live

    monkeypatch.setenv("STREAMFUSE_TEST_CAMERA_PASSWORD", SECRET)
    with socket.socket() as closed:  # our port, not listening: the camera refuses the connection
        closed.bind(("127.0.0.1", 0))
        url = f"rtsp://admin:{{}}@127.0.0.1:{closed.getsockname()[1]}/live?channel=1&token={TOKEN}"
        cfg = load_config(REPO / "streamfuse/configs/demo.yaml", [
            "ir.kind=stream", "ir.path=" + url.format("${STREAMFUSE_TEST_CAMERA_PASSWORD}"), "ir.restart=false",
            "vis.width=64", "vis.height=48", "fuse.name=max", "engine.device=cpu",
            "publish.endpoint=tcp://127.0.0.1:*"])
        assert cfg.ir.path == url.format(SECRET)  # what FFmpeg is given
        with caplog.at_level(logging.INFO), pytest.raises(RuntimeError) as err:
            run_live(cfg, duration_s=60.0)  # ends with the IR camera's refusal; the duration only bounds a failure
    shown = url.format("***").replace(TOKEN, "***")
    assert f"ir: cannot open {shown}: Connection refused" in str(err.value)
    assert f'"path": "{shown}"' in caplog.text  # the config logged at the start
    dump_config(cfg, tmp_path / "resolved.yaml")
    assert shown in (tmp_path / "resolved.yaml").read_text()
    for text in (str(err.value), caplog.text, (tmp_path / "resolved.yaml").read_text()):
        assert SECRET not in text and TOKEN not in text


def test_a_source_error_and_its_warnings_mask_the_password(caplog):
    url = f"rtsp://viewer:{SECRET}@192.0.2.10/ir?pwd={TOKEN}"
    with pytest.raises(SourceError) as err:
        open_source("ir", SourceConfig(kind="folder", path=url)).open()
    assert str(err.value) == "ir: image folder not found: 'rtsp://viewer:***@192.0.2.10/ir?pwd=***'"
    src = open_source("ir", SourceConfig(kind="stream", path=url))
    with caplog.at_level(logging.WARNING):
        src.warn(f"ir: {url}: timestamps went back")
    assert "ir: rtsp://viewer:***@192.0.2.10/ir?pwd=***: timestamps went back" in caplog.text
    assert SECRET not in caplog.text and TOKEN not in caplog.text


def test_a_variable_that_is_not_set_is_one_line_naming_it(monkeypatch):
    monkeypatch.delenv("STREAMFUSE_TEST_UNSET", raising=False)
    with pytest.raises(ConfigError, match=r"ir.path='rtsp://admin:\$\{STREAMFUSE_TEST_UNSET\}@cam/live': environment "
                                          r"variable STREAMFUSE_TEST_UNSET is not set"):
        config_from_dict({"ir": {"kind": "stream", "path": "rtsp://admin:${STREAMFUSE_TEST_UNSET}@cam/live"}})
    assert config_from_dict({"vis": {"path": "cam$1/$HOME"}}).vis.path == "cam$1/$HOME"  # only ${NAME} is expanded


def test_a_variable_is_percent_encoded_in_a_urls_password_only(monkeypatch):
    """A password with ``@``, ``:`` or ``/`` is given as it is: encoded where it stands in the user info, and a
    variable in the rest of the URL (a stream path) is taken as it is."""
    monkeypatch.setenv("STREAMFUSE_TEST_PASSWORD", "p@ss:w/rd")
    monkeypatch.setenv("STREAMFUSE_TEST_STREAM", "live/main")
    cfg = config_from_dict({"ir": {"kind": "stream",
                                   "path": "rtsp://admin:${STREAMFUSE_TEST_PASSWORD}@cam/${STREAMFUSE_TEST_STREAM}"}})
    assert cfg.ir.path == "rtsp://admin:p%40ss%3Aw%2Frd@cam/live/main"


def test_a_password_after_a_user_name_holding_an_at_sign_is_still_encoded(monkeypatch):
    """A user name that is an e-mail address (``me@corp.example``): the user info ends at the URL's last ``@``
    before the host, as FFmpeg reads it, so the password after the first ``@`` is still encoded."""
    monkeypatch.setenv("STREAMFUSE_TEST_PASSWORD", "p@ss/w")
    cfg = config_from_dict({"ir": {"kind": "stream",
                                   "path": "rtsp://me@corp.example:${STREAMFUSE_TEST_PASSWORD}@cam/live"}})
    assert cfg.ir.path == "rtsp://me@corp.example:p%40ss%2Fw@cam/live"


def test_a_password_in_an_ffmpeg_option_stays_out_of_the_written_config(tmp_path):
    """An FFmpeg option may hold a URL with a password too (a proxy's): FFmpeg gets it, the config written beside
    the outputs (and the recording's copy of it, :meth:`PipelineConfig.to_dict`) masks it as a camera URL's."""
    option = f"http_proxy=http://me:{SECRET}@proxy.local:3128"
    cfg = config_from_dict({"ir": {"kind": "stream", "path": "rtsp://cam/live", "ffmpeg": [option]}})
    assert cfg.ir.ffmpeg == (option,)
    assert cfg.to_dict()["ir"]["ffmpeg"] == ["http_proxy=http://me:***@proxy.local:3128"]
    dump_config(cfg, tmp_path / "resolved.yaml")
    assert SECRET not in (tmp_path / "resolved.yaml").read_text()


def test_a_network_cameras_url_given_as_a_device_camera_is_one_line_naming_the_stream_kind():
    with pytest.raises(ConfigError, match=r"ir: path='rtsp://admin:\*\*\*@10.0.0.7/live' is a network camera's URL: "
                                          r"give it with kind: stream") as caught:
        config_from_dict({"ir": {"kind": "camera", "path": f"rtsp://admin:{SECRET}@10.0.0.7/live"}})
    assert SECRET not in str(caught.value)


def test_variables_in_a_url_whose_user_part_and_path_hold_at_signs_are_encoded_in_the_user_info_alone(monkeypatch):
    """The user info ends at the last ``@`` before the host, not at an ``@`` in the path: variables in the user name
    and the password are encoded, one naming the host right after that ``@`` and one in the path are taken as they
    are."""
    for name, value in (("USER", "me:2"), ("PASSWORD", "p@ss:w/rd"), ("HOST", "cam.local:554"), ("STREAM", "ch1/sub")):
        monkeypatch.setenv(f"STREAMFUSE_TEST_{name}", value)
    url = ("rtsp://${STREAMFUSE_TEST_USER}@corp.example:${STREAMFUSE_TEST_PASSWORD}@${STREAMFUSE_TEST_HOST}/live@main/"
           "${STREAMFUSE_TEST_STREAM}")
    cfg = config_from_dict({"ir": {"kind": "stream", "path": url}})
    assert cfg.ir.path == "rtsp://me%3A2@corp.example:p%40ss%3Aw%2Frd@cam.local:554/live@main/ch1/sub"
