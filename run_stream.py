"""Run a streamfuse pipeline: the same as ``python -m streamfuse run`` (see streamfuse/cli/run.py).

Live:    python run_stream.py --config demo
Replay:  python run_stream.py --config replay --ir IR.mp4 --vis VIS.mp4 --out fused.mp4
"""

import signal
import sys

# A stop (SIGTERM, a hangup) while the package loads is held until the run's own handlers take it: a starved CPU
# stretches the load to seconds, and the signal's default killed the run there without a word (status 143)
if __name__ == "__main__" and hasattr(signal, "pthread_sigmask"):  # run, not imported (held for good)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGHUP})

try:  # a Ctrl-C as the package loads, before stoppable takes the stop signals: one line and 130, not a traceback
    from streamfuse.cli import stoppable
    from streamfuse.cli.run import exit_now, main
except KeyboardInterrupt:
    print("run_stream.py: interrupted (Ctrl-C)", file=sys.stderr)  # as every command's stop line names its signal
    raise SystemExit(130) from None

if __name__ == "__main__":
    code = stoppable(lambda: main(prog="run_stream.py"), "run_stream.py", "run")  # stops taken before its imports
    exit_now(code)
