"""Where torch's compiler keeps its cache, set before torch needs it.

torch makes that folder as it imports its compiler (``torch._dynamo``), which building the model does even though
nothing is compiled: ``TMPDIR/torchinductor_USER``, a name any user can take first. A file there (another user's,
left or planted) made every model load fail ("File exists"), and a link or another user's folder there would receive
this user's compiled code. Where that name is not a folder of this user's alone (nor free to make one),
``TORCHINDUCTOR_CACHE_DIR`` names this user's private folder (:mod:`streamfuse.private_folder`) instead, else a fresh
one of this run's; a value the user set is left alone. The package's import sets it, before any module imports torch.
"""

from __future__ import annotations

import atexit
import getpass
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path

from streamfuse.private_folder import own_folder

__all__ = ["set_cache_dir"]

_VARIABLE = "TORCHINDUCTOR_CACHE_DIR"


def _torch_default() -> Path:
    """The folder torch takes when ``TORCHINDUCTOR_CACHE_DIR`` is unset (as
    ``torch._inductor.runtime.cache_dir_utils.default_cache_dir`` names it)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid_{os.getuid()}"
    return Path(tempfile.gettempdir()) / ("torchinductor_" + re.sub(r'[\\/:*?"<>|]', "_", user))


def _ours(path: Path) -> bool:
    """Free to make, or a real folder of this user's that no one else may write into."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and not info.st_mode & 0o022


def set_cache_dir() -> None:
    """Point ``TORCHINDUCTOR_CACHE_DIR`` elsewhere where torch's own folder is not this user's to use."""
    if _VARIABLE in os.environ or _ours(_torch_default()):
        return
    folder = own_folder("torch")
    if not isinstance(folder, Path):  # taken too: one of this run's own, removed as it ends
        folder = Path(tempfile.mkdtemp(prefix="streamfuse-torch-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
    os.environ[_VARIABLE] = str(folder)
