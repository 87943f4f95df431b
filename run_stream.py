"""Run a streamfuse pipeline: the same as ``python -m streamfuse run`` (see streamfuse/cli/run.py).

Live:    python run_stream.py --config demo
Replay:  python run_stream.py --config replay --ir IR.mp4 --vis VIS.mp4 --out fused.mp4
"""

from streamfuse.cli import stoppable
from streamfuse.cli.run import exit_now, main

if __name__ == "__main__":
    code = stoppable(lambda: main(prog="run_stream.py"), "run_stream.py", "run")  # stops taken before its imports
    exit_now(code)
