"""Subscribe to a streamfuse publisher and print per-frame latency and rate; optionally save or show frames.

Latency columns: ``age`` is now minus the visible (and IR) capture time, ``net`` is now minus the publish time,
both from the header's epoch-ns clocks, so across machines they include the clock offset (use NTP/PTP); ``age`` is
n/a unless the capture times are the wall clock's (``t_capture_clock``: not for a recording's or a video file's frames).
Exits 0 after ``--count`` frames, Ctrl-C or SIGTERM (as a launcher stops it; the summary is printed), 1 when no
frame arrives for ``--timeout`` seconds (the first: ``--first-timeout``, for a publisher still starting), 2 on bad
arguments (or a host name that still does not resolve after ``--timeout``: one started before its publisher's name
exists waits for it). Malformed messages are skipped and
counted; a message part larger than ``--max-frame-mb`` is refused by ZeroMQ before it is buffered.
"""

from __future__ import annotations

import argparse
import collections
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from streamfuse.atomic_write import say_unsynced, write_png, write_refusal
from streamfuse.cli.args import DefaultsFormatter, Parser, int_at_least, key_options, path_arg, positive, text_arg
from streamfuse.client import DEFAULT_MAX_FRAME_BYTES, Subscriber
from streamfuse.connection_watch import load_server_key
from streamfuse.consumer_topics import topic_refusal
from streamfuse.errors import io_reason, printable
from streamfuse.log_queue import install_direct
from streamfuse.signals import handled, raise_interrupt, said_last
from streamfuse.wire import FUSED_PREFIX

__all__ = ["main"]

_PROG = "streamfuse subscribe"  # as its error lines start, those of `python -m streamfuse` around it too


def _check_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Exit 2 with the parser's one line for options that cannot go together."""
    if why := topic_refusal(args.topic):
        parser.error(f"--topic {args.topic}: {why}")
    if args.every != 1 and not args.save:  # it keeps one saved frame in N: without --save it did nothing
        parser.error(f"--every {args.every} needs --save DIR (it keeps one received frame in N)")


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    parser = Parser(prog="python -m streamfuse subscribe", description=__doc__,
                    formatter_class=DefaultsFormatter)
    parser.add_argument("endpoint", help="publisher endpoint, e.g. tcp://127.0.0.1:5555")
    parser.add_argument("--topic", default=FUSED_PREFIX, type=text_arg, help="topic prefix to receive")
    parser.add_argument("--count", type=int_at_least(0), default=0, metavar="N",
                        help="stop after N frames (0 = until Ctrl-C)")
    parser.add_argument("--save", type=path_arg, metavar="DIR", help="write frames as lossless DIR/fused_<seq>.png "
                        "(hundreds of MB a minute: --every keeps one in N)")
    parser.add_argument("--every", type=int_at_least(1), default=1, metavar="N",
                        help="with --save: save one received frame in N")
    parser.add_argument("--show", action="store_true", help="show frames in a window (needs a GUI OpenCV build)")
    parser.add_argument("--latest", action="store_true", help="drain the queue and keep only the newest frame")
    parser.add_argument("--no-shm", action="store_true", help="never read a same-host publisher's shared memory "
                        "(take the ZeroMQ payload)")
    parser.add_argument("--timeout", type=positive(threading.TIMEOUT_MAX), default=10.0, metavar="S",
                        help="give up after S seconds without a frame (or without the publisher's host name resolving)")
    parser.add_argument("--first-timeout", type=positive(threading.TIMEOUT_MAX), default=None, metavar="S",
                        help="give up after S seconds without the first frame (a run started at the same time loads "
                             "its model and compiles its kernels first, tens of seconds on a busy machine); default "
                             "60, or --timeout where that is longer")
    key_options(parser)
    parser.add_argument("--max-frame-mb", type=positive(1e6), default=DEFAULT_MAX_FRAME_BYTES / 1e6, metavar="MB",
                        help="largest image accepted, MB (10^6 bytes); a larger message part is refused")
    args = parser.parse_args(argv)
    install_direct(logging.INFO, "%(levelname)s %(name)s: %(message)s")
    _check_options(parser, args)
    if args.show and not _gui_available():
        # both packages provide cv2: installed side by side they break each other, hence the uninstall first
        return said_last(f"{_PROG}: error: --show needs an OpenCV build with GUI support; this one is headless (pip "
                         "uninstall -y opencv-python-headless && pip install opencv-python; the pipeline itself needs "
                         "only the headless build)", 2)
    if args.save and (why := _unsaveable(args.save)):
        return said_last(f"{_PROG}: error: {why}", 2)
    try:  # SIGTERM (systemd, a ROS launch) stops it as Ctrl-C does, with the summary
        server_key = load_server_key(args.server_key)
        with handled(raise_interrupt, (signal.SIGTERM,)), \
                Subscriber(args.endpoint, args.topic, timeout_s=args.timeout, latest=args.latest, server_key=server_key,
                           client_key_file=args.client_key,
                           max_frame_bytes=max(1, round(args.max_frame_mb * 1e6)),
                           shm=False if args.no_shm else None) as sub:
            return _loop(sub, args)
    except ValueError as exc:
        return said_last(f"{_PROG}: error: {printable(exc)}", 2)
    except RuntimeError as exc:  # latest mode's reader thread stopped
        return said_last(f"{_PROG}: error: {printable(exc)}", 1)
    except KeyboardInterrupt:
        return 0


SUMMARY_WINDOW = 10_000  # frames whose latencies the final summary covers (memory stays flat on long runs)


def _unsaveable(folder: Path) -> str:
    """Why frames cannot be saved in ``folder`` (made where missing), found before the first frame comes; ''."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"cannot make the --save folder {printable(folder)}: {io_reason(exc)}"
    if (exc := write_refusal(folder)) is not None:  # one there already that this user cannot write
        return f"cannot write into the --save folder {printable(folder)}: {io_reason(exc)}"
    return ""


_FIRST_TIMEOUT_S = 60.0  # --first-timeout unless given (or --timeout is longer)


def _loop(sub: Subscriber, args: argparse.Namespace) -> int:
    ages_ms: collections.deque[float] = collections.deque(maxlen=SUMMARY_WINDOW)
    nets_ms: collections.deque[float] = collections.deque(maxlen=SUMMARY_WINDOW)
    arrivals: collections.deque[float] = collections.deque(maxlen=30)  # rate over the last 30 frames
    start = time.monotonic()
    try:
        while not args.count or sub.received < args.count:
            malformed = sub.malformed
            first = args.first_timeout if args.first_timeout is not None else max(args.timeout, _FIRST_TIMEOUT_S)
            wait = args.timeout if sub.received else first
            frame = sub.recv(wait)
            if frame is None:
                print(f"no frame from {args.endpoint} (topic {args.topic!r}) for {wait:g} s after "
                      f"{sub.received} frames: {_why_silent(sub, args.server_key, sub.malformed - malformed)}",
                      file=sys.stderr)
                return 1
            header, image = frame
            now_ns = time.time_ns()
            arrivals.append(time.monotonic())
            net_ms = (now_ns - header["t_publish_ns"]) / 1e6
            nets_ms.append(net_ms)
            if _on_this_clock(header):
                age_ms = (now_ns - header["t_capture_vis_ns"]) / 1e6
                ages_ms.append(age_ms)
                age = f"age {age_ms:7.1f} ms (ir {(now_ns - header['t_capture_ir_ns']) / 1e6:.1f})"
            else:
                age = "age n/a (the source's own clock)"
            rate = (len(arrivals) - 1) / (arrivals[-1] - arrivals[0]) if len(arrivals) > 1 else 0.0
            print(f"seq {header['seq']:6d} {header['width']}x{header['height']} {header['encoding']} "
                  f"{header['format']} {age} net {net_ms:6.2f} ms  {rate:5.1f} fps  missed {sub.missed} "
                  f"malformed {sub.malformed}", flush=True)
            if args.save and (sub.received - 1) % args.every == 0:
                try:  # through a temporary name: a kill never leaves a truncated PNG that looks whole
                    write_png(args.save / f"fused_{header['seq']:08d}.png", image, new=True)
                except RuntimeError as exc:
                    return said_last(f"{_PROG}: error: {printable(exc)}", 2)
            if args.show and not _shown(args.endpoint, image):
                break
    finally:
        _summary(sub, ages_ms, nets_ms, time.monotonic() - start)
        say_unsynced()
    return 0


def _on_this_clock(header: dict[str, Any]) -> bool:
    """Whether the capture times are the wall clock's at capture: against a recording's times (replayed) an age would
    read the hours since it was made, against a video file's or frame folder's own times (from 0) decades. An older
    publisher does not say: times after 2001 are taken for the wall clock's."""
    clock = header["t_capture_clock"]
    return clock == "epoch" or (not clock and header["t_capture_vis_ns"] >= 10**18)


def _why_silent(sub: Subscriber, server_key: str, malformed: int) -> str:
    """Why no frame arrives, as far as the connection's events and the ``malformed`` messages meanwhile tell."""
    if malformed:
        some = "1 message arrived, malformed" if malformed == 1 else f"{malformed} messages arrived, all malformed"
        return f"{some} (the last: {sub.last_malformed})"
    given = server_key if Path(server_key).is_file() else "the --server-key given"
    if sub.handshake_failures and server_key:
        return (f"{sub.handshake_failures} CURVE handshakes failed: the publisher's public key differs from {given} "
                f"(or it does not encrypt, or it lets in only the consumers' keys in its publish.curve_clients_dir: "
                f"--client-key)")
    if sub.handshake_failures:
        return f"{sub.handshake_failures} handshakes failed: the publisher encrypts, give its key with --server-key"
    if server_key:
        return f"the publisher is not running, or its CURVE public key differs from {given}"
    return "is the publisher running?"


def _summary(sub: Subscriber, ages_ms: collections.deque[float], nets_ms: collections.deque[float],
             elapsed_s: float) -> None:
    def pct(values: collections.deque[float]) -> str:
        return f"median {np.median(values):.2f} p99 {np.percentile(values, 99):.2f} ms" if values else "n/a"

    window = "" if sub.received <= SUMMARY_WINDOW else f" (latencies of the last {SUMMARY_WINDOW})"
    print(f"received {sub.received} frames in {elapsed_s:.1f} s{window}; age {pct(ages_ms)}; net {pct(nets_ms)}; "
          f"missed {sub.missed}, malformed {sub.malformed}, discarded {sub.discarded}, from shared memory "
          f"{sub.via_shm}", flush=True)


def _gui_available() -> bool:
    import cv2  # only --show needs OpenCV's windows (--save its PNG encoder): a plain subscribe does without it

    try:
        cv2.namedWindow("streamfuse")
    except cv2.error:
        return False
    return True


def _shown(title: str, image: np.ndarray) -> bool:
    """Show ``image`` in the window ``title``; False once q or Esc is pressed there."""
    import cv2

    cv2.imshow(title, image)
    return cv2.waitKey(1) not in (27, ord("q"))


if __name__ == "__main__":
    sys.exit(main())
