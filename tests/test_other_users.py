"""What one user meets of another's on a shared host: files left in a shared folder with the sticky bit (``/tmp``),
which only their owner may move or delete, are named in one line before any work, never midway through it; another
user's ``ipc://`` socket is neither taken over nor waited on in silence."""

from __future__ import annotations

import json
import os
import socket

import pytest
from helpers_users import OTHER, OWNER, as_other_user, needs_root, shared_folder

from streamfuse.atomic_write import partial_path
from streamfuse.output_lock import lock_path, output_lock
from streamfuse.replay.outputs import check_output_folder
from streamfuse.replay.resume import sidecar_path

CHECK = """
from pathlib import Path
from streamfuse.replay.outputs import check_output_folder
check_output_folder(Path(out), "h264")
"""
BIND = """
import zmq
from streamfuse.endpoints import bind
ctx = zmq.Context()
try:
    with ctx.socket(zmq.XPUB) as sock:
        sock.setsockopt(zmq.LINGER, 0)
        bind(sock, endpoint)
finally:
    ctx.term()
"""
TAKE = """
from pathlib import Path
from streamfuse.output_lock import output_lock
with output_lock(Path(out)):
    pass
"""
CONNECT = """
from streamfuse.connection_watch import connect_sub
connect_sub(endpoint, [b"fused/"], rcvhwm=2, max_part_bytes=1 << 20)
"""


@needs_root
@pytest.mark.parametrize("left", ["partial", "sidecar"])
def test_another_users_interrupted_replay_in_a_shared_folder_is_named_before_any_work(left):
    # --resume loaded the model, then stopped on "[Errno 1] Operation not permitted: '.f.mp4.partial' -> ...old"
    with shared_folder() as folder:
        out = folder / "f.mp4"
        theirs = partial_path(out) if left == "partial" else sidecar_path(out)
        theirs.write_bytes(b"their frames")
        os.chown(theirs, OWNER, OWNER)
        said = as_other_user(CHECK, out=out)
        assert said == (f"PermissionError: {theirs} belongs to uid {OWNER}, in a shared folder where only they may "
                        f"move or delete it (a replay must): ask them to, or choose another --out")
        assert theirs.read_bytes() == b"their frames"
        os.chown(theirs, OTHER, OTHER)  # the user's own file: theirs to replace
        assert as_other_user(CHECK, out=out) == ""


@needs_root
def test_a_file_left_in_a_shared_folder_stops_neither_the_folders_owner_nor_root():
    # the sticky bit lets the folder's owner and root move another user's file there too: refusing them would stop a
    # replay that would have run
    with shared_folder() as folder:
        out = folder / "f.mp4"
        partial_path(out).write_bytes(b"their frames")
        os.chown(partial_path(out), OWNER, OWNER)
        os.chown(folder, OWNER, OWNER)
        check_output_folder(out, "h264")  # root
        os.chown(folder, OTHER, OTHER)
        assert as_other_user(CHECK, out=out) == ""


@needs_root
def test_another_users_link_in_a_shared_folder_is_named_whatever_it_points_at():
    # the sticky bit protects the link itself: its target being this user's file makes it no more theirs to move
    with shared_folder() as folder:
        out = folder / "f.mp4"
        (folder / "mine").write_bytes(b"")
        os.chown(folder / "mine", OTHER, OTHER)
        partial_path(out).symlink_to(folder / "mine")
        os.lchown(partial_path(out), OWNER, OWNER)
        said = as_other_user(CHECK, out=out)
        assert said.startswith(f"PermissionError: {partial_path(out)} belongs to uid {OWNER}, in a shared folder")

def _socket(path, listening: bool) -> socket.socket:
    """A Unix socket at ``path`` standing for a third user's publisher: running (listening) or ended (not)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    if listening:
        sock.listen()
    os.chmod(path, 0o755)  # as libzmq makes it under the usual umask: only its owner may connect
    os.chown(path, OWNER, OWNER)
    return sock


@needs_root
def test_another_users_socket_left_in_a_shared_folder_is_named_when_binding_there():
    # "endpoint ... is already in use (another publisher running? ...)" where none ran: libzmq could not remove it
    with shared_folder() as folder, _socket(folder / "pub", listening=False):
        said = as_other_user(BIND, endpoint=f"ipc://{folder / 'pub'}")
        assert said == (f"FileExistsError: cannot bind endpoint ipc://{folder / 'pub'}: {folder / 'pub'} is a socket "
                        f"of uid {OWNER}'s (their publisher's, running or ended), in a shared folder where only they "
                        f"may remove it; choose another path")


@needs_root
def test_another_users_running_publisher_is_never_taken_over():
    # a socket this user may not connect to looked like a dead one: libzmq deleted it and took its place
    with shared_folder(0o777) as folder, _socket(folder / "pub", listening=True):
        inode = (folder / "pub").stat().st_ino
        said = as_other_user(BIND, endpoint=f"ipc://{folder / 'pub'}")
        assert said.startswith("ZMQError: Address already in use")
        assert (folder / "pub").stat().st_ino == inode


@needs_root
def test_subscribing_to_another_users_socket_says_why_it_cannot_connect():
    # libzmq retried in silence: "no frame ... for 60 s after 0 frames: is the publisher running?"
    with shared_folder() as folder, _socket(folder / "pub", listening=True):
        said = as_other_user(CONNECT, endpoint=f"ipc://{folder / 'pub'}")
        assert said == (f"ValueError: cannot connect to ipc://{folder / 'pub'}: permission denied: the socket "
                        f"belongs to uid {OWNER} (mode 0755); another user connects only where its publisher made "
                        f"it writable")
        assert as_other_user(CONNECT, endpoint=f"ipc://{folder / 'none'}") == ""  # a publisher yet to start


@needs_root
def test_a_save_folder_this_user_cannot_write_is_refused_before_any_frame(capfd):
    # refused only at the first frame: "cannot write .../fused_00000287.png: Permission denied", once one came
    with shared_folder(0o755) as folder:
        # locale: the usage error's translation imports it there on Python 3.10 (its library may be root's alone)
        said = as_other_user("import locale\nimport sys\nfrom streamfuse.subscribe import main\nsys.exit(main(argv))",
                             argv=["tcp://127.0.0.1:1", "--save", folder, "--timeout", "0.1", "--first-timeout", "0.1"])
        assert said == "SystemExit: 2"
        assert capfd.readouterr().err.splitlines() == [f"streamfuse subscribe: error: cannot write into the --save "
                                                       f"folder {folder}: Permission denied"]


@needs_root
def test_another_users_replay_writing_the_same_output_is_named_as_such():
    # "... .h.mp4.partial belongs to uid 65533 ...: ask them to" of a file their running replay was writing
    with shared_folder() as folder, output_lock(folder / "h.mp4"):
        partial_path(folder / "h.mp4").write_bytes(b"")
        os.chown(partial_path(folder / "h.mp4"), OWNER, OWNER)
        said = as_other_user(CHECK, out=folder / "h.mp4")  # the lock this process holds stands for their replay's
        assert said.startswith(f"FileExistsError: output {folder / 'h.mp4'} is being written by another run (")


@needs_root
def test_a_sidecar_temporary_file_another_user_left_in_this_users_folder_is_replaced():
    # root's replay killed there left it: the user's replay stopped on "cannot write .OUT.partial.json"
    with shared_folder(0o755) as folder:
        os.chown(folder, OTHER, OTHER)  # the user's own folder
        out = folder / "k.mp4"
        left = sidecar_path(out).with_suffix(".tmp")
        left.write_bytes(b"")
        os.chown(left, OWNER, OWNER)
        said = as_other_user("from pathlib import Path\nfrom streamfuse.replay.resume import save_sidecar\n"
                             "save_sidecar(Path(out), {'ir': 1}, 'running', 0, None)", out=out)
        assert said == ""
        assert json.loads(sidecar_path(out).read_text())["fingerprint"] == {"ir": 1} and not left.exists()


@needs_root
@pytest.mark.parametrize("mode", [0o1777, 0o777])
def test_another_users_output_lock_left_in_a_shared_folder_is_named(mode):
    # "cannot lock output .../l.mp4: .../.l.mp4.lock: Permission denied", naming no one
    with shared_folder(mode) as folder:
        out, lock = folder / "l.mp4", lock_path(folder / "l.mp4")
        lock.write_bytes(b"")
        os.chown(lock, OWNER, OWNER)
        assert as_other_user(TAKE, out=out) == (f"PermissionError: cannot lock output {out}: {lock} belongs to uid "
                                                f"{OWNER}, left by a run of theirs, and this user may not write it: "
                                                f"ask them to remove it, or give another output")
        os.chown(lock, OTHER, OTHER)  # the user's own, left by a run of theirs: taken
        assert as_other_user(TAKE, out=out) == ""
