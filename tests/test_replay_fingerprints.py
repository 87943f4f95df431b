"""What a resume holds against the interrupted run's sidecar (streamfuse.replay.fingerprints), in-process: a folder
input's entry as an earlier release wrote it stands for the folder it names while its files are unchanged, and an
entry of no shape any release wrote is a changed input, not a traceback."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from streamfuse.replay.fingerprints import _input_stat, changed_since, changed_while_read, cut_gone, inputs_read


def _folders(tmp_path: Path) -> dict[str, list]:
    """Two folders of three frames each (5 bytes a file), and a hidden file beside the IR frames; the fingerprint's
    entries of them as this release writes them."""
    for sub in ("ir", "vi"):
        (tmp_path / sub).mkdir()
        for i in range(3):
            (tmp_path / sub / f"{i:04d}.png").write_bytes(b"frame")
    (tmp_path / "ir" / ".DS_Store").write_bytes(b"hidden file")
    return {key: [str(tmp_path / sub), *_input_stat(str(tmp_path / sub))] for key, sub in (("ir", "ir"), ("vis", "vi"))}


def _legacy(folder: Path) -> list:
    """The entry an earlier release wrote of ``folder``: the size of its files but hidden ones, and the newest time of
    those and the folder."""
    files = [p.stat() for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
    return [str(folder), sum(st.st_size for st in files), max(st.st_mtime_ns for st in [*files, folder.stat()])]


def test_a_folders_entry_of_an_earlier_release_stands_for_its_unchanged_files(tmp_path):
    now = _folders(tmp_path)
    (tmp_path / "ir" / "sub").mkdir()  # a folder inside is no file of it
    os.utime(tmp_path / "ir", ns=(10**18, 10**18))  # older than its files: the newest of them is the entry's time
    assert changed_since({"ir": _legacy(tmp_path / "ir"), "vis": now["vis"]}, now) == []
    # an older release's: size 0 and the folder's own time
    assert changed_since({"ir": [str(tmp_path / "ir"), 0, 10**18], "vis": now["vis"]}, now) == []


@pytest.mark.parametrize("change", ["newer file", "larger file", "another folder", "folder's own time"])
def test_a_folders_entry_of_an_earlier_release_does_not_stand_for_changed_files_or_another_folder(tmp_path, change):
    now = _folders(tmp_path)
    saved = _legacy(tmp_path / "ir")
    frame = tmp_path / "ir" / "0001.png"
    if change == "newer file":
        os.utime(frame, ns=(saved[2] + 10**9, saved[2] + 10**9))
    elif change == "larger file":
        frame.write_bytes(b"frame!")
        saved[2] = frame.stat().st_mtime_ns  # as large a time: only the size tells
    elif change == "folder's own time":  # an older release's entry, the folder touched since
        saved = [saved[0], 0, (tmp_path / "ir").stat().st_mtime_ns - 10**9]
    else:  # the same files, copied with their times, under another name: not the input the run read
        (tmp_path / "copy").mkdir()
        for path in (tmp_path / "ir").iterdir():
            (tmp_path / "copy" / path.name).write_bytes(path.read_bytes())
            os.utime(tmp_path / "copy" / path.name, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns))
        saved[0] = str(tmp_path / "copy")
    now = {"ir": [str(tmp_path / "ir"), *_input_stat(str(tmp_path / "ir"))], "vis": now["vis"]}
    assert changed_since({"ir": saved, "vis": now["vis"]}, now) == ["ir"]


@pytest.mark.parametrize("entry", [[5, 0, 0], ["FOLDER", "SIZE", None]], ids=["no path", "no time"])
def test_an_input_entry_of_another_shape_is_a_changed_input(tmp_path, entry):
    """A sidecar edited by hand, or of no release: its input is changed, said in the resume's one line."""
    now = _folders(tmp_path)
    entry = [str(tmp_path / "ir") if v == "FOLDER" else _legacy(tmp_path / "ir")[1] if v == "SIZE" else v
             for v in entry]
    saved = {"ir": entry, "vis": now["vis"]}
    assert changed_since(saved, now) == ["ir"]
    assert inputs_read(["ir"], saved) == (" (it read ir 5: 0 bytes, modified 1970-01-01 00:00:00 UTC)"
                                          if entry[0] == 5 else "")


def test_an_input_changed_while_it_was_read_is_said_how(tmp_path):
    now = _folders(tmp_path)
    video = tmp_path / "ir.mkv"
    video.write_bytes(b"12345")
    prints = {"ir": [str(video), *_input_stat(str(video))], "vis": now["vis"]}
    os.utime(video, ns=(prints["ir"][2] + 10**9, prints["ir"][2] + 10**9))
    assert "(5 bytes, written since)" in changed_while_read(prints)
    video.write_bytes(b"123456")
    assert "(5 bytes then, 6 now)" in changed_while_read(prints)
    (tmp_path / "vi" / "0002.png").unlink()  # three files of 15 bytes become two of as many
    (tmp_path / "vi" / "0001.png").write_bytes(b"frameframe")
    assert changed_while_read({"ir": now["vis"], "vis": now["vis"]}) == (
        f"ir input {tmp_path / 'vi'} changed while it was read (3 image files of 15 bytes then, 2 of 15 now): its "
        "frames may mix two files; replay it again once it is written whole")


def test_a_recording_recovered_of_the_cut_one_read_stands_for_it_while_that_is_unchanged(tmp_path):
    now = _folders(tmp_path)
    cut, recovered = tmp_path / ".r.mcap.partial", tmp_path / "r.mcap"
    cut.write_bytes(b"cut recording")
    saved = {"ir": [str(cut), *_input_stat(str(cut))], "vis": now["vis"]}
    now = {"ir": [str(recovered), 1000, 1], "vis": now["vis"]}
    assert changed_since(dict(saved), now) == []
    os.utime(cut, ns=(saved["ir"][2] + 10**9, saved["ir"][2] + 10**9))  # the same size, touched since
    assert changed_since(dict(saved), now) == ["ir"]
    assert cut_gone(saved, now).startswith(f"{recovered} was recovered of the cut recording it read, which is not")
