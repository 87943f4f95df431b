"""Where numba keeps the compiled kernels, so that they compile once and every later start only loads them.

numba keeps them beside the source (``__pycache__``) or in the user's cache folder (``~/.cache``), whichever it can
write; where it can write neither (an install owned by root, run by a service user without a home; a container with a
read-only root), a kernel with ``cache=True`` fails to compile at all ("cannot cache function ...: no locator
available"). :data:`CACHE` is what the kernels pass as ``cache``: numba's own choice where it has one, else a folder
of this user's own under the temporary directory, else no cache (each start compiles again, a few seconds).
``NUMBA_CACHE_DIR``, when set, is numba's and left alone. A cache that takes no more bytes (a full disk, a quota, a
file size limit) costs the cache, not the run: :func:`kernels` compiles the module again without it.
"""

from __future__ import annotations

import importlib
import logging
import os
from pathlib import Path
from types import ModuleType

from numba.core import config
from numba.core.caching import FunctionCache

from streamfuse.private_folder import own_folder

__all__ = ["CACHE", "kernels"]

log = logging.getLogger(__name__)


def _probe() -> None:
    """A function of this package, for asking numba where it would cache one."""


def _locatable() -> bool:
    try:
        FunctionCache(_probe)
    except RuntimeError:  # no locator available
        return False
    return True


def _choose() -> bool:
    if config.CACHE_DIR or _locatable():
        return True
    folder = own_folder("numba")
    if isinstance(folder, Path):
        # the environment too: numba re-reads its config from it when that changes
        os.environ["NUMBA_CACHE_DIR"] = config.CACHE_DIR = str(folder)
        log.info("numba kernels cached in %s (the package's folder and the home folder are read-only)", folder)
        return True
    log.warning("numba kernels compiled at every start: no folder to keep them in (the package's folder and the home "
                "folder are read-only, and %s); NUMBA_CACHE_DIR can name one", folder)
    return False


CACHE = _choose()


def kernels(name: str) -> ModuleType:
    """The kernel module ``name``, imported (its kernels compiled or loaded). numba raises the error of a cache file it
    cannot write from the compile itself, which ended the run with a traceback on a full disk: the module is then
    imported again with :data:`CACHE` off (its kernels read it as they are defined)."""
    global CACHE
    try:
        return importlib.import_module(name)
    except OSError as exc:
        if not CACHE:
            raise
        log.warning("numba kernels not cached: %s; compiled at every start until their cache can be written",
                    exc.strerror or exc)
        CACHE = False
        return importlib.import_module(name)
