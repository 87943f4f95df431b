"""Run a streamfuse pipeline: the same as ``python -m streamfuse run`` (see streamfuse/cli/run.py).

Live:    python run_stream.py --config demo
Replay:  python run_stream.py --config replay --ir IR.mp4 --vis VIS.mp4 --out fused.mp4
"""

from streamfuse.cli.run import exit_now, main
from streamfuse.signals import TERMINATE, handled, raise_terminated

if __name__ == "__main__":
    with handled(raise_terminated, TERMINATE):  # from the start, before the pipeline's imports (see cli.STOPPED_BY)
        code = main(prog="run_stream.py")
    exit_now(code)
