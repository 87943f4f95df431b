"""What a resume holds against the interrupted run's sidecar (streamfuse.replay.fingerprints), in-process: a folder
input's entry as an earlier release wrote it stands for the folder it names while its files are unchanged, and an
entry of no shape any release wrote is a changed input, not a traceback."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from streamfuse.replay.fingerprints import _input_stat, changed_since, inputs_read


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
