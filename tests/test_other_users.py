"""What one user meets of another's on a shared host: files left in a shared folder with the sticky bit (``/tmp``),
which only their owner may move or delete, are named in one line before any work, never midway through it."""

from __future__ import annotations

import os

import pytest
from helpers_users import OTHER, OWNER, as_other_user, needs_root, shared_folder

from streamfuse.atomic_write import partial_path
from streamfuse.replay.outputs import check_output_folder
from streamfuse.replay.resume import sidecar_path


@needs_root
@pytest.mark.parametrize("left", ["partial", "sidecar"])
def test_another_users_interrupted_replay_in_a_shared_folder_is_named_before_any_work(left):
    # --resume loaded the model, then stopped on "[Errno 1] Operation not permitted: '.f.mp4.partial' -> ...old"
    with shared_folder() as folder:
        out = folder / "f.mp4"
        theirs = partial_path(out) if left == "partial" else sidecar_path(out)
        theirs.write_bytes(b"their frames")
        os.chown(theirs, OWNER, OWNER)
        said = as_other_user(lambda: check_output_folder(out, "h264"))
        assert said == (f"PermissionError: {theirs} belongs to uid {OWNER}, in a shared folder where only they may "
                        f"move or delete it (a replay must): ask them to, or choose another --out")
        assert theirs.read_bytes() == b"their frames"
        os.chown(theirs, OTHER, OTHER)  # the user's own file: theirs to replace
        assert as_other_user(lambda: check_output_folder(out, "h264")) == ""

