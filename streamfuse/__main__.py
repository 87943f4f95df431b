"""``python -m streamfuse COMMAND [ARGS...]``: the same as the ``streamfuse`` console script (see streamfuse.cli)."""

import signal
import sys

# A stop while the commands load is held until console() takes it (see run_stream.py)
if __name__ == "__main__" and hasattr(signal, "pthread_sigmask"):  # run, not imported (held for good)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGHUP})

try:  # a Ctrl-C as the package loads, before console() takes the stop signals: one line and 130, not a traceback
    if __name__ == "__main__" and hasattr(signal, "pthread_sigmask"):  # one the package held as it loaded comes now
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    from streamfuse.cli import console
except KeyboardInterrupt:
    print(" ".join(["streamfuse", *sys.argv[1:2]]) + ": interrupted (Ctrl-C)", file=sys.stderr)  # as console() says it
    raise SystemExit(130) from None

if __name__ == "__main__":
    console()
