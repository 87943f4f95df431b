"""An IP camera's RTSP server, in a thread of the test: OPTIONS, DESCRIBE, SETUP and PLAY as a camera answers them, then
H.264 frames as RTP over the RTSP connection (interleaved TCP, RFC 2326 10.12; RFC 6184 single NAL units and FU-A
fragments), so FFmpeg's RTSP client plays it as it plays a camera. Each PLAY starts the clip from its first frame (an
IDR with its SPS and PPS); ``then`` decides what the camera does after ``frames_per_session`` frames: ``close`` its
connection (unplugged), ``hang`` (still connected, nothing sent) or ``loop`` on."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import re
import socket
import struct
import threading
import time
from fractions import Fraction

import av
import numpy as np

WIDTH, HEIGHT, FPS = 64, 48, 25
_PT, _SSRC, _MTU = 96, 0x5EED1234, 1200
_RTP_START = 0x9E3779B9  # a session's first RTP time: random by RFC 3550, as cameras start it


def _rtp_time(i: int) -> int:
    """Frame ``i``'s RTP time (90 kHz, wrapping at 32 bits)."""
    return (_RTP_START + i * 90_000 // FPS) & 0xFFFFFFFF


def grey(i: int) -> int:
    """The level of frame ``i`` of the clip (a ramp, so a reader can tell the frames apart and in order)."""
    return 40 + 3 * (i % 50)


def _clip(frames: int) -> list[list[bytes]]:
    """The NAL units of each of ``frames`` H.264 frames (x264, one IDR every 25 frames, no B-frames)."""
    codec = av.CodecContext.create("libx264", "w")
    codec.width, codec.height, codec.pix_fmt = WIDTH, HEIGHT, "yuv420p"
    codec.time_base, codec.framerate = Fraction(1, FPS), Fraction(FPS)
    codec.options = {"preset": "ultrafast", "tune": "zerolatency", "g": "25", "bf": "0"}
    units = []
    for i in range(frames + 1):
        frame = None
        if i < frames:
            frame = av.VideoFrame.from_ndarray(np.full((HEIGHT, WIDTH, 3), grey(i), np.uint8), format="rgb24")
            frame.pts = i
        for packet in codec.encode(frame):
            units.append([n.lstrip(b"\0") for n in bytes(packet).split(b"\0\0\1") if n.strip(b"\0")])
    return units


def _rtp(nal: bytes, seq: int, stamp: int, last: bool) -> list[bytes]:
    """RTP packets of one NAL unit: whole where it fits, else FU-A fragments."""
    def packet(payload: bytes, marker: bool) -> bytes:
        return struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | _PT, seq & 0xFFFF, stamp, _SSRC) + payload
    if len(nal) <= _MTU:
        return [packet(nal, last)]
    head, body = nal[0], nal[1:]
    parts = [body[i:i + _MTU] for i in range(0, len(body), _MTU)]
    out = []
    for k, part in enumerate(parts):
        flags = (0x80 if k == 0 else 0) | (0x40 if k == len(parts) - 1 else 0)
        out.append(packet(bytes([(head & 0xE0) | 28, flags | (head & 0x1F)]) + part, last and k == len(parts) - 1))
        seq += 1
    return out


class RtspCamera:
    """The camera at ``self.url`` (``rtsp://127.0.0.1:PORT/stream1``, or with ``user``'s credentials when a password
    is set: Basic authentication, or Digest as most cameras ask), on ``server`` where given (a socket bound, not
    listening: the port refused connections until now, as a camera's does while it boots). It sends RTP over the
    RTSP connection (``transport="tcp"``) or to the client's UDP ports (``"udp"``: a camera that refuses interleaved
    TCP), and answers a SETUP asking for the other with 461. Frame ``i`` of a session is captured at
    ``captured_ns + i / FPS`` (``captured_ns``: when the last PLAY came, on this machine's clock) and sent
    ``latency_s`` later (an encoder's delay); RTCP sender reports (``sender_reports``) give those capture times on the
    camera's clock, ``clock_offset_s`` ahead of ours. ``plays`` counts the sessions played, ``transports`` the
    Transport headers clients asked for."""

    def __init__(self, *, password: str = "", user: str = "admin", frames_per_session: int = 250,
                 then: str = "close", server: socket.socket | None = None, transport: str = "tcp",
                 digest: bool = False, latency_s: float = 0.0, sender_reports: bool = True,
                 clock_offset_s: float = 0.0, epoch_ns: int = 0) -> None:
        self._latency_s, self._reports, self._offset_ns = latency_s, sender_reports, round(clock_offset_s * 1e9)
        self._epoch_ns = epoch_ns
        self.captured_ns = 0
        self._units, self._transport = _clip(50), transport
        self._udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # our RTP port (the client may write to it)
        self._udp.bind(("127.0.0.1", 0))
        self._client_port = 0
        self._user, self._password, self._digest = user, password, digest
        self._per_session, self._then = frames_per_session, then
        self._server = server or socket.create_server(("127.0.0.1", 0))  # a socket bound earlier listens from now
        self._server.listen(8)
        self.port = self._server.getsockname()[1]
        self.url = f"rtsp://127.0.0.1:{self.port}/stream1"
        self.plays, self.transports = 0, []
        self._closed = threading.Event()
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def __enter__(self) -> RtspCamera:
        return self

    def __exit__(self, *exc: object) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):  # wakes the accept (closing alone does not)
            self._server.shutdown(socket.SHUT_RDWR)
        self._server.close()
        self._udp.close()
        for thread in self._threads:
            thread.join(10)

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        reader, lock = conn.makefile("rb"), threading.Lock()
        try:
            while not self._closed.is_set():
                request = self._request(reader)
                if request is None:
                    return
                status, headers = self._answer(*request)
                reply = f"RTSP/1.0 {status}\r\nCSeq: {request[2].get('cseq', '0')}\r\n" + "".join(
                    f"{k}: {v}\r\n" for k, v in headers.items() if k != "body")
                body = headers.get("body", "")
                reply += (f"Content-Type: application/sdp\r\nContent-Length: {len(body)}\r\n\r\n{body}"
                          if body else "\r\n")
                with lock:
                    conn.sendall(reply.encode())
                if request[0] == "PLAY" and status.startswith("200"):
                    self.plays += 1
                    sender = threading.Thread(target=self._send, args=(conn, lock), daemon=True)
                    self._threads.append(sender)
                    sender.start()
        except OSError:
            return
        finally:
            reader.close()

    @staticmethod
    def _request(reader) -> tuple[str, str, dict[str, str]] | None:
        """The next request's method, URL and headers (lower-case names); interleaved RTCP from the client skipped."""
        first = reader.read(1)
        while first == b"$":  # '$', channel, length, packet: the client's RTCP receiver reports
            head = reader.read(3)
            if len(head) < 3:
                return None
            reader.read(struct.unpack("!H", head[1:])[0])
            first = reader.read(1)
        if not first:
            return None
        line = first + reader.readline()
        method, url, _ = line.decode().split(" ", 2)
        headers = {}
        while (field := reader.readline().decode().strip()):
            name, _, value = field.partition(":")
            headers[name.strip().lower()] = value.strip()
        return method, url, headers

    def _answer(self, method: str, url: str, headers: dict[str, str]) -> tuple[str, dict[str, str]]:
        if method == "OPTIONS":
            return "200 OK", {"Public": "OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN, GET_PARAMETER"}
        if self._password and not self._authorized(method, headers.get("authorization", "")):
            scheme = 'Digest realm="camera", nonce="5eed0123"' if self._digest else 'Basic realm="camera"'
            return "401 Unauthorized", {"WWW-Authenticate": scheme}
        if not url.split("?")[0].rstrip("/").split("/", 3)[-1].startswith("stream1"):
            return "404 Not Found", {}
        if method == "DESCRIBE":
            sdp = (f"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=camera\r\nt=0 0\r\nm=video 0 RTP/AVP {_PT}\r\n"
                   f"a=rtpmap:{_PT} H264/90000\r\na=fmtp:{_PT} packetization-mode=1\r\na=control:track1\r\n")
            return "200 OK", {"Content-Base": self.url + "/", "body": sdp}
        if method == "SETUP":
            asked = headers.get("transport", "")
            self.transports.append(asked)
            if ("interleaved" in asked) != (self._transport == "tcp"):
                return "461 Unsupported Transport", {}
            if self._transport == "tcp":
                return "200 OK", {"Transport": "RTP/AVP/TCP;unicast;interleaved=0-1", "Session": "5eed;timeout=60"}
            ports = asked.split("client_port=")[1].split(";")[0]
            self._client_port = int(ports.split("-")[0])
            ours = self._udp.getsockname()[1]
            return "200 OK", {"Transport": f"RTP/AVP;unicast;client_port={ports};server_port={ours}-{ours + 1}",
                              "Session": "5eed;timeout=60"}
        return "200 OK", {"Session": "5eed"}  # PLAY, GET_PARAMETER (keep-alive), TEARDOWN

    def _authorized(self, method: str, given: str) -> bool:
        """Basic: the user and password; Digest (RFC 2617, no qop): the response to our nonce."""
        if not self._digest:
            return given == "Basic " + base64.b64encode(f"{self._user}:{self._password}".encode()).decode()
        fields = dict(re.findall(r'(\w+)="?([^",]*)"?', given.removeprefix("Digest ")))
        ha1 = hashlib.md5(f"{self._user}:camera:{self._password}".encode()).hexdigest()
        ha2 = hashlib.md5(f"{method}:{fields.get('uri', '')}".encode()).hexdigest()
        return fields.get("response") == hashlib.md5(f"{ha1}:5eed0123:{ha2}".encode()).hexdigest()

    def _packets(self, conn: socket.socket, lock: threading.Lock, packets: list[bytes], channel: int) -> None:
        """RTP (channel 0) or RTCP (1) packets over the RTSP connection, or to the client's UDP port (RTCP: the
        next)."""
        if self._transport == "udp":
            for p in packets:
                self._udp.sendto(p, ("127.0.0.1", self._client_port + channel))
        else:
            with lock:
                conn.sendall(b"".join(b"$" + bytes([channel]) + struct.pack("!H", len(p)) + p for p in packets))

    def _report(self, i: int) -> bytes:
        """An RTCP sender report: frame ``i``'s RTP time and its capture time on the camera's clock (NTP, 1900)."""
        ntp = self.captured_ns + i * 10**9 // FPS + self._offset_ns + 2_208_988_800 * 10**9
        seconds, part = divmod(ntp, 10**9)
        return struct.pack("!BBHIIIIII", 0x80, 200, 6, _SSRC, seconds, (part << 32) // 10**9, _rtp_time(i), 0, 0)

    def _send(self, conn: socket.socket, lock: threading.Lock) -> None:
        """The clip from its first frame, paced at FPS and ``latency_s`` behind its capture; then ``then``. With an
        ``epoch_ns`` the camera runs from then on (frame ``i`` captured at ``epoch_ns + i / FPS``, as two cameras
        filming the same moment), a session starting at its next keyframe."""
        now, seq = time.time_ns(), 0
        self.captured_ns = self._epoch_ns or now
        first = -(-(now - self.captured_ns) * FPS // (25 * 10**9)) * 25  # 0 without an epoch
        start = time.monotonic() + (self.captured_ns - now) / 1e9 + self._latency_s  # when frame 0 goes
        count = self._per_session if self._then != "loop" else 10**9
        for i in range(first, first + count):
            if self._closed.wait(max(0.0, start + i / FPS - time.monotonic())):
                return
            units = self._units[i % len(self._units)]
            packets = []
            for k, nal in enumerate(units):
                packets += _rtp(nal, seq + len(packets), _rtp_time(i), k == len(units) - 1)
            seq += len(packets)
            try:
                if self._reports and i % FPS == 0:  # once a second, as cameras send them
                    self._packets(conn, lock, [self._report(i)], 1)
                self._packets(conn, lock, packets, 0)
            except OSError:
                return
        if self._then == "close":
            with contextlib.suppress(OSError):  # the client may have gone first
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        else:  # hang: connected, silent, until the test ends
            self._closed.wait()


class HangingUp:
    """A server at ``self.port`` that takes each connection and closes it at once, without a byte (a camera
    restarting, or one whose sessions are all taken), or after ``answer`` (a server of something else, a web page);
    ``taken`` counts the connections. On ``server`` where given (a socket bound), which it leaves open at its end: the
    port stays the test's for the camera that comes up on it."""

    def __init__(self, server: socket.socket | None = None, answer: bytes = b"") -> None:
        self._own, self._answer = server is None, answer
        self._server = server or socket.create_server(("127.0.0.1", 0))
        self._server.listen(8)
        self.port, self.taken = self._server.getsockname()[1], 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def __enter__(self) -> HangingUp:
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        with contextlib.suppress(OSError):  # wakes the accept, which then ends (shutting the socket would end it too)
            socket.create_connection(("127.0.0.1", self.port), timeout=10).close()
        self._thread.join(10)
        if self._own:
            self._server.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            if self._done.is_set():  # the wake-up (or a client as the test ends): not served
                conn.close()
                return
            with conn, contextlib.suppress(OSError):  # a client that left at once
                conn.sendall(self._answer)
            self.taken += 1
