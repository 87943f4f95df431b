"""The batch replay benchmark: the same as ``python -m streamfuse bench batch`` (see its -h)."""

import sys

try:
    from streamfuse.bench.batch import main
except ModuleNotFoundError as exc:  # a Python without the package: say which one to use, not a traceback
    sys.exit(f"{exc.name} is not installed for {sys.executable}; run `make venv` once and use .venv/bin/python")

if __name__ == "__main__":
    sys.exit(main())
