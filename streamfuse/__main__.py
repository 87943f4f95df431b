"""``python -m streamfuse COMMAND [ARGS...]``: the same as the ``streamfuse`` console script (see streamfuse.cli)."""

from streamfuse.cli import console

if __name__ == "__main__":
    console()
