"""``streamfuse.atomic_write.write_file``, through which evaluate, ablate and target_sweep write every output: a failed
write leaves no truncated file under the final name, and what is at that name (a symlink, a device) is kept."""

from __future__ import annotations

import errno
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from streamfuse.atomic_write import write_file, write_png
from streamfuse import metrics
from streamfuse.eval_report import check_outputs, markdown_table, write_csv


def test_a_full_disk_leaves_the_earlier_file_and_no_partial_one(tmp_path, monkeypatch):
    path = tmp_path / "metrics.csv"
    path.write_text("the earlier run's complete table\n")
    real_write = Path.write_bytes

    def half_then_full(self: Path, data: bytes) -> int:
        real_write(self, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_bytes", half_then_full)
    with pytest.raises(RuntimeError) as exc:
        write_file(path, b"method,image\n" * 100)
    assert str(exc.value) == f"cannot write {path}: No space left on device"
    assert path.read_text() == "the earlier run's complete table\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv"]


def test_a_png_whose_write_fails_leaves_no_file_under_its_name(tmp_path, monkeypatch):
    """A frame PNG (replay's frames_dir, subscribe --save) is written whole or not at all: a resumed replay keeps the
    PNGs it finds as finished frames."""
    real_write = Path.write_bytes

    def half_then_full(self: Path, data: bytes) -> int:
        real_write(self, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_bytes", half_then_full)
    with pytest.raises(RuntimeError, match="No space left on device"):
        write_png(tmp_path / "000001.png", np.zeros((48, 64, 3), np.uint8))
    assert list(tmp_path.iterdir()) == []


def test_a_symlink_keeps_pointing_at_the_new_file(tmp_path):
    target, link = tmp_path / "runs" / "summary.json", tmp_path / "latest.json"
    target.parent.mkdir()
    link.symlink_to(target)
    write_file(link, b"{}\n")
    assert link.is_symlink() and target.read_bytes() == b"{}\n"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["latest.json", "runs", "summary.json"]  # no partial file


def test_a_new_write_never_takes_a_name_another_writer_took(tmp_path):
    """Two processes saving frames into one folder (subscribe --save): a name is one writer's, taken in one step."""
    path = tmp_path / "fused_00000001.png"
    assert write_file(path, b"first", new=True) == path
    assert write_file(path, b"second", new=True) == tmp_path / "fused_00000001-2.png"
    assert write_file(path, b"third", new=True) == tmp_path / "fused_00000001-3.png"
    assert [p.read_bytes() for p in sorted(tmp_path.iterdir())] == [b"second", b"third", b"first"]


def test_writers_racing_for_one_name_each_keep_their_own_file(tmp_path):
    path = tmp_path / "frame.png"
    with ThreadPoolExecutor(8) as pool:
        written = list(pool.map(lambda i: write_file(path, f"writer {i}".encode(), new=True), range(32)))
    assert len(set(written)) == 32 and sorted(p.read_bytes() for p in written) == sorted(
        f"writer {i}".encode() for i in range(32))
    assert sorted(tmp_path.iterdir()) == sorted(written)  # and no temporary file left


def test_a_link_planted_at_a_temporary_name_is_not_followed(tmp_path):
    """The temporary name is new each time and made, not opened: writers never share it or write through a link."""
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    (tmp_path / ".metrics.csv.partial").symlink_to(precious)  # the fixed name earlier versions wrote through
    write_file(tmp_path / "metrics.csv", b"method,image\n")
    assert precious.read_text() == "keep me" and (tmp_path / "metrics.csv").read_bytes() == b"method,image\n"


def test_a_device_is_written_to_not_replaced():
    """``--json /dev/stdout`` (or /dev/null) must not turn the device into a regular file. The device is a terminal
    this test owns: a write_file that replaced it would have replaced the machine's /dev/null, run as root."""
    master, follower = os.openpty()
    try:
        device = Path(os.ttyname(follower))
        write_file(device, b"{}\n")
        assert stat.S_ISCHR(os.stat(device).st_mode) and os.read(master, 64) == b"{}\r\n"  # the terminal's newline
    finally:
        os.close(master)
        os.close(follower)


def test_a_device_output_is_checked_itself_not_its_folder(monkeypatch):
    """``--json /dev/null`` (or /dev/stdout): write_file writes a device as it is, so only the device must be writable,
    not /dev, which is not for a user who is not root (simulated: this may run as root)."""
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != Path("/dev") and real_access(p, mode))
    check_outputs({}, {}, {"--json": "/dev/null"})
    with pytest.raises(ValueError, match="--json /dev/x.json cannot be written: /dev is not writable"):
        check_outputs({}, {}, {"--json": "/dev/x.json"})


def test_an_output_under_a_file_is_one_line(tmp_path):
    (tmp_path / "notes.txt").write_text("a file, not a folder")
    for folders, files in (({"output folder": tmp_path / "notes.txt" / "out" / "deeper"}, {}),
                           ({}, {"--json": tmp_path / "notes.txt" / "a.json"})):
        with pytest.raises(ValueError, match=r"cannot be written: .*notes.txt is a file$"):
            check_outputs({}, folders, files)


@pytest.mark.parametrize("delta", [False, True])
def test_every_line_of_the_markdown_table_has_as_many_columns_as_its_header(delta):
    # without it, a separator line of fewer cells breaks the table's rendering (GitHub shows the text as is)
    row = {**{k: 0.5 for k in metrics.METRICS}, "ms": float("nan"), "n": 3, **({"delta_grey": 1.0} if delta else {})}
    lines = markdown_table({"max": row, "average": {**row, "ms": 2.0}}).splitlines()
    assert len(lines) == 4 and len({line.count("|") for line in lines}) == 1, lines
    assert set(lines[1].strip("|").split("|")) == {"---"}


def test_an_output_folder_is_checked_for_writing_not_reading(tmp_path, monkeypatch):
    """A folder that can be read but not written (simulated: this may run as root) is refused, itself or its parent."""
    (read_only := tmp_path / "ro").mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: not (Path(p) == read_only and mode & os.W_OK)
                        and real_access(p, mode))
    for out in (read_only, read_only / "scores"):
        with pytest.raises(ValueError, match=f"output folder {out} cannot be written: {read_only} is not writable"):
            check_outputs({}, {"output folder": out})
    check_outputs({}, {"output folder": tmp_path / "elsewhere"})


def test_an_input_given_through_a_symlink_is_still_never_written_into(tmp_path):
    (real := tmp_path / "data" / "ir").mkdir(parents=True)
    (link := tmp_path / "ir_link").symlink_to(real)
    with pytest.raises(ValueError, match=f"output folder {real / 'scores'} is or lies in the IR folder {link}"):
        check_outputs({"IR": link}, {"output folder": real / "scores"})


def test_the_csv_keeps_six_significant_digits(tmp_path):
    row = {"method": "max", "image": "p0", **{k: 1.23456789 for k in metrics.METRICS}, "ms": 12.3456789}
    write_csv(tmp_path / "metrics.csv", [row])
    header, line = (tmp_path / "metrics.csv").read_text().splitlines()
    assert header.split(",")[:3] == ["method", "image", "EN"]
    assert line.split(",") == ["max", "p0", *["1.23457"] * len(metrics.METRICS), "12.3457"]


def test_the_markdown_table_gives_metrics_to_three_decimals_and_ms_to_one():
    row = {**{k: 0.123456 for k in metrics.METRICS}, "ms": 2.345, "n": 3}
    cells = [c.strip() for c in markdown_table({"max": row}).splitlines()[2].strip("|").split("|")]
    assert cells == ["max", "3", *["0.123"] * len(metrics.METRICS), "2.3"]


def test_the_csv_keeps_a_name_s_bytes_that_are_not_utf8(tmp_path):
    # writing it stopped evaluate on "'utf-8' codec can't encode characters ...: surrogates not allowed"
    write_csv(tmp_path / "m.csv", [{"method": "max", "image": "bad\udcff\udcfe 空"}])
    assert (tmp_path / "m.csv").read_bytes().splitlines()[1].startswith(b"max,bad\xff\xfe " + "空".encode() + b",")


def test_the_markdown_table_has_the_metrics_columns_in_the_published_order():
    """The columns a reader compares with other tables, in order and under their labels, with or without a reference."""
    row = {**{k: 0.5 for k in metrics.METRICS}, "ms": 2.0, "n": 3}
    head = ("| method | n | EN | SD | SF | AG | MI | SCD | VIF | Qabf | Nabf | Over % | SSIM | CC | DF | QSF (rSFe) "
            "| ms/frame |")
    assert markdown_table({"max": row}).splitlines()[0] == head
    assert markdown_table({"max": {**row, "delta_grey": 1.0}}).splitlines()[0] == head + " delta grey |"


def test_the_csv_of_one_row_against_a_reference_keeps_its_delta_columns(tmp_path):
    """One method scored against itself on one pair: its delta grey and squared difference are columns too."""
    row = {"method": "max", "image": "p0", **{k: 0.5 for k in metrics.METRICS}, "ms": 2.0, "delta_grey": 0.0,
           "mse_ref": 0.0}
    write_csv(tmp_path / "metrics.csv", [row])
    header, line = (tmp_path / "metrics.csv").read_text().splitlines()
    assert header.split(",")[-3:] == ["ms", "delta_grey", "mse_ref"] and line.split(",")[-2:] == ["0", "0"]


def test_the_markdown_table_gives_delta_grey_to_three_decimals():
    row = {**{k: 0.5 for k in metrics.METRICS}, "ms": 2.0, "n": 3, "delta_grey": 0.123456}
    assert markdown_table({"max": row}).splitlines()[2].endswith("| 2.0 | 0.123 |")
