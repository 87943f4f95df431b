"""streamfuse's command line: ``python -m streamfuse COMMAND [ARGS...]``; ``COMMAND -h`` shows a command's help.

Commands:
  run        run a pipeline, live or offline replay (the same as run_stream.py)
  subscribe  print per-frame latency and rate of a running pipeline (python -m streamfuse.subscribe)
  view       serve a live web page of a running pipeline: IR, visible and fused frames with its stats
  foxglove   serve a running pipeline's fused frames and stats to Foxglove (needs the foxglove extra)
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Callable

__all__ = ["main"]


def _run_main() -> Callable[[list[str]], int]:
    """run_stream.py's ``main``, from the source tree this package lives in (it is a script, not a module)."""
    path = Path(__file__).resolve().parents[1] / "run_stream.py"
    if not path.is_file():
        raise SystemExit(f"streamfuse: error: `run` needs run_stream.py beside the package (a source checkout); "
                         f"{path} does not exist")
    spec = importlib.util.spec_from_file_location("run_stream", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def _subscribe_main() -> Callable[[list[str]], int]:
    from streamfuse.subscribe import main

    return main


def _view_main() -> Callable[[list[str]], int]:
    from streamfuse.view.server import main

    return main


def _foxglove_main() -> Callable[[list[str]], int]:
    from streamfuse.view.foxglove_bridge import main

    return main


COMMANDS = {"run": _run_main, "subscribe": _subscribe_main, "view": _view_main, "foxglove": _foxglove_main}


def main(argv: list[str] | None = None) -> int:
    """Dispatch to the command's own ``main``; returns its exit status."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: python -m streamfuse {{{','.join(COMMANDS)}}} [ARGS...]\n\n{__doc__}")
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        print(f"python -m streamfuse: unknown command {argv[0]!r}; choose one of {', '.join(COMMANDS)}",
              file=sys.stderr)
        return 2
    return COMMANDS[argv[0]]()(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
