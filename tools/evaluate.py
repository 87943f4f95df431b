"""Score fusion methods on IR/visible pairs: the same as ``python -m streamfuse evaluate`` (see its -h)."""

import sys

try:
    from streamfuse.cli.evaluate import main
except ModuleNotFoundError as exc:  # a Python without the package: say which one to use, not a traceback
    sys.exit(f"{exc.name} is not installed for {sys.executable}; run `make venv` once and use .venv/bin/python")

if __name__ == "__main__":
    sys.exit(main())
