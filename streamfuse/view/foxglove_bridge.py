"""Serve a running pipeline to Foxglove: fused frames, stats, and on request the IR and visible previews.

Channels: ``/fused/image`` (``foxglove.CompressedImage`` JPEG, or ``foxglove.RawImage`` with --raw), ``/stats``
(JSON: the pipeline's telemetry snapshot), and with --previews ``/ir/image`` and ``/vis/image`` (the topics of
``record``'s MCAP files, so one Foxglove layout shows a recording and the live stream). Open Foxglove and connect
to ``ws://HOST:PORT`` (Open connection, Foxglove WebSocket). A frame is encoded only while a Foxglove client
subscribes to its channel, and each client has a small queue: a slow client loses frames, it never builds a backlog.

Exits 0 on Ctrl-C or SIGTERM, 1 when the server cannot start, 2 on bad arguments (or when the pipeline's host name
still does not resolve after --name-wait seconds: one started before its pipeline's name exists waits that long for
it).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
import types
from typing import Any

import numpy as np

from streamfuse.cli.args import DefaultsFormatter, Parser, int_at_least
from streamfuse.client import Subscriber
from streamfuse.codecs import JPEG_MAX_SIDE
from streamfuse.connection_watch import load_server_key
from streamfuse.consumer_topics import consumer_stats_topic, consumer_topic
from streamfuse.endpoints import bind_shown, faces_network, url_host
from streamfuse.errors import io_reason, printable
from streamfuse.log_queue import install_direct
from streamfuse.signals import handled, raise_interrupt, said_last, takeable
from streamfuse.view.gate import MAX_CONNECTIONS, allow_host_option, connections_option
from streamfuse.view.options import connect_options, stream_options
from streamfuse.view.relay import Relay
from streamfuse.view.stats_in import POLL_S, StatsMessages
from streamfuse.wire import FUSED_PREFIX, STATS_PREFIX, preview_topic

__all__ = ["main", "Bridge"]

log = logging.getLogger("streamfuse.foxglove")

_BACKLOG = 4  # messages queued per Foxglove client before the oldest frame is dropped (its default is 1024)
_MAX_STAMP_NS = 2**32 * 10**9  # foxglove.Timestamp's seconds are a u32 (1970..2106); the wire's times are int64 ns


def _foxglove() -> types.ModuleType:  # the module, imported late so that a missing extra is one line
    try:
        import foxglove
        import foxglove.channels
        import foxglove.messages
    except ImportError:
        raise SystemExit("streamfuse foxglove: needs foxglove-sdk: pip install 'streamfuse[foxglove]'") from None
    return foxglove


class Bridge:
    """Subscribes to a pipeline and logs what it receives to Foxglove channels; ``start`` and ``close``.

    Args:
        endpoint: the pipeline's publish endpoint.
        topic: fused topic (prefix); stats_topic: stats topic (prefix).
        host, port: where the Foxglove WebSocket server listens (port 0: any free port, see ``port`` after start).
        raw: send ``foxglove.RawImage`` instead of JPEG ``foxglove.CompressedImage`` (loopback only: 30x larger).
        previews: also relay the IR and visible previews (the pipeline sends them only while someone asks).
        quality: JPEG quality.
        server_key: the publisher's CURVE public key (Z85) when it encrypts.
        client_key_file: this consumer's ``.key_secret`` file, for a publisher with ``publish.curve_clients_dir``.
        name_wait_s: how long the pipeline's host name is looked up again while it does not resolve, seconds; None =
            ``connection_watch.NAME_WAIT_S``.
        max_connections: connections open at once (see :mod:`streamfuse.view.relay`).
        allow_hosts: host names a connection reaching loopback may name besides addresses and localhost (a proxy's).
    """

    def __init__(self, endpoint: str, topic: str = FUSED_PREFIX, stats_topic: str = STATS_PREFIX, *,
                 host: str = "127.0.0.1", port: int = 8765, raw: bool = False, previews: bool = False,
                 quality: int = 80, server_key: str = "", client_key_file: str = "", name_wait_s: float | None = None,
                 max_connections: int = MAX_CONNECTIONS, allow_hosts: tuple[str, ...] = ()) -> None:
        self.fox = _foxglove()
        topic = consumer_topic(topic)  # a shared-memory descriptor topic is refused here, not in start()
        self.endpoint, self.raw, self.quality, self.keys = endpoint, raw, quality, (server_key, client_key_file)
        self.logged: dict[str, int] = {}  # messages logged per channel
        self.skipped = 0  # frames a Foxglove message cannot carry (see _message)
        self._skips: dict[str, int] = {}  # the same per kind of reason: only each kind's first is logged
        self._stop = threading.Event()
        # raises ValueError on a bad endpoint, or a host name that still does not resolve after name_wait_s
        self.stats_in = StatsMessages(endpoint, consumer_stats_topic(stats_topic, topic), self.keys, self._stop,
                                      name_wait_s=name_wait_s)
        self._sources = {"/fused/image": topic}
        if previews:
            self._sources.update({f"/{s}/image": preview_topic(topic, s) for s in ("ir", "vis")})
        self._host, self._port, self._max_connections, self._names = host, port, max_connections, allow_hosts
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        """Start the Foxglove server and the subscriptions.

        Raises:
            RuntimeError: the server cannot listen on host:port (one line).
        """
        try:  # on loopback, behind the relay (its cap and deadline): the SDK's own listener dies with no files left
            self.server = self.fox.start_server(name="streamfuse", host="127.0.0.1", port=0,
                                                message_backlog_size=_BACKLOG)
            self.relay = Relay(self._host, self._port, self.server.port, self._max_connections, names=self._names)
            self.port = self.relay.start()
        except Exception as exc:  # noqa: BLE001 - the SDK raises its own error types; the relay's bind an OSError
            self.stats_in.close()
            if hasattr(self, "server"):
                self.server.stop()
            reason = io_reason(exc) if isinstance(exc, OSError) else exc
            raise RuntimeError(f"cannot start the Foxglove server on {self._host}:{self._port}: {reason}") from None
        channels = self.fox.channels
        image_channel = channels.RawImageChannel if self.raw else channels.CompressedImageChannel
        stats = self.fox.Channel("/stats", message_encoding="json")
        self._spawn(self._relay_stats, stats)
        for name, topic in self._sources.items():
            sub = Subscriber(self.endpoint, topic, timeout_s=POLL_S, latest=True, server_key=self.keys[0],
                             client_key_file=self.keys[1])
            self._spawn(self._relay_frames, sub, image_channel(name))

    def close(self) -> None:
        """Stop the subscriptions and the server."""
        self._stop.set()
        for thread in self._threads:
            thread.join()
        for kind, count in self._skips.items():
            log.warning("skipped %d frames in all for their %s (the first one logged)", count,
                        "capture time" if kind == "time" else "size")
        if hasattr(self, "server"):  # first: its clients get its closing handshake through the relay
            self.server.stop()
        if hasattr(self, "relay"):
            self.relay.close()

    def _spawn(self, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name=f"foxglove {target.__name__}", daemon=True)
        self._threads.append(thread)
        thread.start()

    def _relay_stats(self, channel: Any) -> None:
        for stats in self.stats_in:
            channel.log(stats, log_time=stats.get("t_ns"))
            self.logged["/stats"] = self.logged.get("/stats", 0) + 1

    def _relay_frames(self, sub: Subscriber, channel: Any) -> None:
        with sub:
            while not self._stop.is_set():
                frame = sub.recv()
                if frame is not None and channel.has_sinks():  # nobody subscribed: no encoding either
                    header, image = frame
                    stamp = header["t_capture_ir_ns" if channel.topic() == "/ir/image" else "t_capture_vis_ns"]
                    message = self._message(header, image, stamp)
                    if message is not None:
                        channel.log(message, log_time=stamp)
                        self.logged[channel.topic()] = self.logged.get(channel.topic(), 0) + 1

    def _message(self, header: dict[str, Any], image: np.ndarray, stamp: int) -> Any | None:
        """The Foxglove message of a frame; None (counted in ``skipped``, logged) for one that it cannot carry: a
        capture time before 1970 or after 2106, or (JPEG) a side over 65500."""
        if not 0 <= stamp < _MAX_STAMP_NS:
            return self._skip("time", f"capture time {stamp} ns is outside foxglove.Timestamp's range (1970..2106)")
        messages = self.fox.messages
        timestamp = messages.Timestamp(sec=stamp // 1_000_000_000, nsec=stamp % 1_000_000_000)
        if self.raw:
            image = np.ascontiguousarray(image)
            return messages.RawImage(timestamp=timestamp, frame_id=header["frame_id"], width=header["width"],
                                     height=header["height"], encoding=header["encoding"], step=image.strides[0],
                                     data=image.tobytes())
        import cv2  # here: a --raw bridge needs no OpenCV (nor one whose clients take no frames)

        ok, jpeg = (False, None) if max(image.shape[:2]) > JPEG_MAX_SIDE else \
            cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        if not ok:
            return self._skip("size", f"JPEG cannot hold a {image.shape} frame (sides up to {JPEG_MAX_SIDE})")
        return messages.CompressedImage(timestamp=timestamp, frame_id=header["frame_id"], data=jpeg.tobytes(),
                                        format="jpeg")

    def _skip(self, kind: str, why: str) -> None:
        """Count a frame skipped for ``kind`` of reason; only the first of each kind is logged (a stream of them
        would be one line a frame), the rest summed up by :meth:`close`."""
        self.skipped += 1
        self._skips[kind] = self._skips.get(kind, 0) + 1
        if self._skips[kind] == 1:
            log.warning("skipped a frame: %s (more such frames are counted, not logged)", why)


def main(argv: list[str] | None = None) -> int:
    """Run the bridge CLI; returns the exit status."""
    parser = Parser(prog="python -m streamfuse foxglove", description=__doc__,
                    formatter_class=DefaultsFormatter)
    parser.add_argument("--host", default="127.0.0.1", help="address of the Foxglove WebSocket server (loopback: this "
                        "machine only; it has no password and the frames are not encrypted)")
    parser.add_argument("--port", type=int_at_least(0, 65535), default=8765,
                        help="port of the Foxglove WebSocket server")
    stream_options(parser, "fused topic (prefix), e.g. fused/rig0")
    parser.add_argument("--raw", action="store_true", help="send foxglove.RawImage instead of JPEG")
    parser.add_argument("--previews", action="store_true", help="also relay the IR and visible previews")
    parser.add_argument("--quality", type=int_at_least(1, 100), default=80, help="JPEG quality (1..100)")
    # behind the relay: the client's, the relay's and the SDK's socket
    connections_option(parser, "connections open at once; one more is answered 503 and closed (at most a third of "
                       "the open-file limit, ulimit -n, less 192: each holds three files)", files_each=3)
    allow_host_option(parser)
    connect_options(parser)
    args = parser.parse_args(argv)
    install_direct(logging.INFO, "%(levelname)s %(name)s: %(message)s")
    try:
        with handled(raise_interrupt, (signal.SIGTERM,)):  # stops the wait for the pipeline's host name
            bridge = Bridge(args.endpoint, args.topic, args.stats_topic, host=args.host, port=args.port, raw=args.raw,
                            previews=args.previews, quality=args.quality, server_key=load_server_key(args.server_key),
                            client_key_file=args.client_key, name_wait_s=args.name_wait,
                            max_connections=args.max_connections, allow_hosts=tuple(args.allow_host))
    except ValueError as exc:
        return said_last(f"streamfuse foxglove: error: {printable(exc)}", 2)
    except KeyboardInterrupt:
        return 0
    # noted in a list, not set on an Event: the handler runs on the main thread where it interrupted it, and there it
    # waited forever for the lock that the Event's wait held between its checks (a SIGTERM as the wait took it again)
    stops: list[int] = []
    try:
        for sig in takeable((signal.SIGINT, signal.SIGTERM)):
            signal.signal(sig, lambda signum, _: stops.append(signum))
        bridge.start()
        if faces_network(args.host):
            log.warning("serving Foxglove on %s, reachable from other machines: no password, frames unencrypted",
                        bind_shown(args.host))
        log.info("Foxglove: connect to ws://%s:%d (pipeline %s); Ctrl-C stops", url_host(args.host), bridge.port,
                 args.endpoint)  # an IPv6 address in brackets, every address as localhost: a URL to paste
        # polled: a stop the kernel gives another thread waits for the main thread to run its handler
        while not stops:
            time.sleep(POLL_S)
        return 0
    except KeyboardInterrupt:  # a stop before the handlers above: the same end as after them, the bridge closed
        return 0
    except RuntimeError as exc:
        return said_last(f"streamfuse foxglove: error: {printable(exc)}", 1)
    finally:
        bridge.close()
