"""A file cut short whose frames decode up to the cut without an error (``container_end``): the file source reads the
complete file to its end without a word, and the same file cut at a frame or inside one stops with one line naming
the file and what its container misses; a file the container cannot tell from a cut one (NUT without its index) is
reported, and one never finalised (written to a pipe) is only checked for a last element cut inside: what its header
states in place of lengths (an AVI's 2^30 frames) is no end.
"""

from __future__ import annotations

import re
import struct
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from streamfuse.capture.container_end import Cut, finalised, missing_end
from streamfuse.capture.sources import SourceConfig, SourceError, open_source

pytestmark = [pytest.mark.timeout(60),
              pytest.mark.skipif("libx264" not in av.codecs_available, reason="this PyAV build has no libx264")]

N = 12


class _Pipe:
    """A file written without seeking back: the muxer cannot finalise it (a live recording)."""

    def __init__(self, path: Path):
        self._file = path.open("wb")

    def write(self, data: bytes) -> int:
        return self._file.write(data)

    def close(self) -> None:
        self._file.close()


def write(path: Path, fmt: str, *, piped: bool = False, options: dict[str, str] | None = None,
          slots: int = 0) -> list[int]:
    """N noisy 64x48 frames: H.264 (no B-frames) at 25 fps, or with ``slots`` MPEG-4 at 30 fps on a time base of
    ``slots`` ticks a frame (1/600 s with 20); the start of each video packet in the file."""
    rng = np.random.default_rng(0)
    target = _Pipe(path) if piped else str(path)
    tick = Fraction(1, 30 * slots) if slots else Fraction(1, 25)
    with av.open(target, "w", format=fmt, options=options or {}) as container:
        if slots:
            stream = container.add_stream("mpeg4", rate=30)
            stream.time_base = tick
        else:
            stream = container.add_stream("libx264", rate=25, options={"bf": "0", "preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(N):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 256, (48, 64, 3), np.uint8), format="bgr24")
            frame.pts, frame.time_base = i * (slots or 1), tick
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    if piped:
        target.close()
    with av.open(str(path)) as container:
        return [p.pos for p in container.demux(container.streams.video[0]) if p.size]


def read_all(path: Path, kind: str = "file") -> tuple[int, list[str]]:
    """Frames read by the file source (or a live ``stream`` one) to the end, and its warnings."""
    src = open_source("vis", SourceConfig(kind=kind, path=str(path), realtime=False))
    warnings: list[str] = []
    src.warn = warnings.append
    n = 0
    with src:
        while src.read() is not None:
            n += 1
    return n, warnings


def cut_to(path: Path, size: int) -> None:
    path.write_bytes(path.read_bytes()[:size])


@pytest.mark.parametrize("fmt, options, missing", [
    ("matroska", {}, "its Matroska segment announces"),
    ("flv", {}, "its FLV metadata announces"),
    ("avi", {}, "its last RIFF chunk (RIFF) announces"),
    ("mpeg", {}, "its last MPEG-PS packet (video) announces"),  # MPEG-1 packs, pack headers far apart
    ("dvd", {}, "its last MPEG-PS packet (video) announces"),  # MPEG-2 packs of 2048 bytes
])
def test_a_file_cut_before_its_last_frame_is_truncated_the_complete_one_is_not(tmp_path: Path, fmt: str,
                                                                             options: dict[str, str],
                                                                             missing: str) -> None:
    path = tmp_path / f"v.{fmt}"
    starts = write(path, fmt, options=options)
    assert read_all(path) == (N, [])
    cut_to(path, starts[-1] + (0 if fmt in ("matroska", "flv") else 40))  # at its last frame, or 40 bytes into it
    # 40 bytes of the last frame had decoded into a whole one (concealed): the decoder stops at it now, at the frames
    # it holds back (MPEG-PS's B-frames) before it, where its error or the container's end says the file is cut
    with pytest.raises(SourceError, match=f"v.{fmt}: truncated or corrupt video: decoding stopped after frame "
                                          f"(\\d+) .*; ({re.escape(missing)} |the container announces)") as err:
        read_all(path)
    assert N - 3 <= int(re.search(r"after frame (\d+)", str(err.value)).group(1)) <= N - 1


def test_mpegts_that_ends_inside_a_transport_packet_is_truncated_whole_packets_are_not(tmp_path: Path) -> None:
    path, m2ts = tmp_path / "v.ts", tmp_path / "v.m2ts"
    write(path, "mpegts")
    write(m2ts, "mpegts", options={"mpegts_m2ts_mode": "1"})  # 192-byte packets
    assert read_all(path) == (N, []) and missing_end(m2ts, "mpegts") is None
    cut_to(path, path.stat().st_size - 100)
    with pytest.raises(SourceError, match="v.ts: truncated or corrupt video: .*does not end with a whole MPEG-TS"):
        read_all(path)


def test_mpeg_ps_with_bytes_after_its_last_whole_packet_is_read_with_a_warning(tmp_path: Path) -> None:
    """FFmpeg writes no program end code: whole packets end a complete file (and one cut between two, which cannot be
    told); an end code or VCD's zero bytes after them are no cut, other bytes (a start code cut short, 0xFF bytes,
    which a padding packet holds) are reported."""
    path = tmp_path / "v.mpg"
    write(path, "dvd")
    data = path.read_bytes()
    for tail in (b"", b"\0\0\1\xb9", bytes(20)):
        path.write_bytes(data + tail)
        assert read_all(path) == (N, [])
    path.write_bytes(data + b"\0\0\1\xb9\0\0\1")
    n, warnings = read_all(path)
    assert n == N and len(warnings) == 1
    assert warnings[0].endswith(f"v.mpg: 3 unrecognised bytes follow its last whole MPEG-PS packet (end code): frames "
                                f"after frame {N} may be missing")


def test_nut_without_its_index_is_reported_and_read_to_its_end(tmp_path: Path) -> None:
    path = tmp_path / "v.nut"
    write(path, "nut", piped=True)  # FFmpeg writes the index to a pipe too
    assert read_all(path) == (N, [])
    cut_to(path, path.stat().st_size // 2)
    if int(av.__version__.split(".")[0]) < 18:  # PyAV 17 raises the cut picture's error where 18 drops it
        with pytest.raises(SourceError, match="v.nut: decoding stopped after frame .*: Invalid data found"):
            read_all(path)
        return
    n, warnings = read_all(path)
    assert 0 < n < N
    assert "v.nut: its NUT index is missing" in warnings[-1]
    assert f"frames after frame {n} may be missing" in warnings[-1]
    # the cut picture: not decoded into a frame from part of its data, but said
    assert warnings[:-1] in ([], [f"vis: {path}: 1 of its {n + 1} packets decoded to no frame (damaged data, or a "
                                  "stream cut before a keyframe); their frames are missing"])


def test_a_nut_whose_last_bytes_only_look_like_a_pointer_to_its_index_is_still_without_one(tmp_path: Path) -> None:
    """The last 12 bytes of a cut file are frame data: where they read as a pointer into the file, what it points
    at must be the index's start code."""
    path = tmp_path / "v.nut"
    write(path, "nut", piped=True)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2] + (100).to_bytes(8, "big") + bytes(4))  # 100 bytes back: frame data
    assert missing_end(path, "nut") == Cut("its NUT index is missing (the file was cut short, or written without one)",
                                           False)


def test_a_live_matroska_never_finalised_says_nothing_until_its_last_cluster_is_cut(tmp_path: Path) -> None:
    path = tmp_path / "v.mkv"
    starts = write(path, "matroska", piped=True)  # unknown segment size, no duration, no cues
    assert read_all(path) == (N, [])
    cut_to(path, starts[-1] + 40)
    with pytest.raises(SourceError, match="v.mkv: truncated .*; its last Matroska element \\(Cluster\\) announces"):
        read_all(path)


INDEXES = {"matroska": bytes.fromhex("1C53BB6B"), "avi": b"idx1", "mp4": b"mfra"}  # Cues; AVI 1.0's; fragmented MP4's


@pytest.mark.parametrize("fmt", INDEXES)
@pytest.mark.parametrize("into", [0.1, 0.9])
def test_a_file_cut_inside_the_index_after_its_frames_is_read_whole_with_a_warning(tmp_path: Path, fmt: str,
                                                                                   into: float) -> None:
    """A writer stopped, or a copy cut, while the index it writes after the frames was being written: every frame
    is there and read, the file is not refused; the cut is said."""
    path = tmp_path / f"v.{fmt}"
    write(path, fmt, options={"movflags": "frag_keyframe+empty_moov"} if fmt == "mp4" else None)
    data = path.read_bytes()
    start = data.rfind(INDEXES[fmt]) + 8  # past the index's header (an ID and size, or a size and type)
    cut_to(path, start + int((len(data) - start) * into))
    n, warnings = read_all(path)
    assert n == N and len(warnings) == 1
    assert re.search(f"v.{fmt}: its last .* announces {len(data)} bytes, the file has \\d+: cut in its index or "
                     f"metadata, after the frames: all {N} frames it announces were read$", warnings[0])


def test_an_index_cut_after_the_frames_of_a_file_that_announces_no_end_may_have_lost_frames(tmp_path: Path) -> None:
    """A Matroska file never finalised (no length, no frame count) whose index is cut: a warning that frames may be
    missing (what followed it is not known), not a refusal. An FLV script tag cut is a cut: data streams and live
    recordings write them between the frames."""
    mkv, flv = tmp_path / "v.mkv", tmp_path / "v.flv"
    write(mkv, "matroska", piped=True)
    mkv.write_bytes(mkv.read_bytes() + bytes.fromhex("1C53BB6B") + b"\x40\x80" + bytes(20))  # 128 bytes of Cues
    n, warnings = read_all(mkv)
    assert n == N and len(warnings) == 1
    assert warnings[0].endswith(f"frames after frame {N} may be missing")
    write(flv, "flv", piped=True)
    flv.write_bytes(flv.read_bytes() + b"\x12\x00\x00\x80" + bytes(7) + b"\x02")  # a script tag of 128 bytes
    with pytest.raises(SourceError, match="v.flv: truncated or corrupt video: .*its last FLV tag \\(script data\\)"):
        read_all(flv)


def test_flv_cut_inside_the_size_after_a_whole_tag_is_truncated_by_its_file_size(tmp_path: Path) -> None:
    """A cut between two tags, inside the PreviousTagSize after the first, looks like a file written without its
    last one, which a complete file can be: the file size its metadata announces says it is cut."""
    path = tmp_path / "v.flv"
    write(path, "flv")
    data = path.read_bytes()
    last = len(data) - 4 - struct.unpack(">I", data[-4:])[0]  # the last tag's start
    cut_to(path, last - 2)
    assert missing_end(path, "flv") == Cut(f"its FLV metadata announces {len(data)} bytes, the file has {last - 2}",
                                           True)


def test_flv_that_ends_inside_a_tag_is_truncated_even_without_a_file_size(tmp_path: Path) -> None:
    path = tmp_path / "v.flv"
    starts = write(path, "flv", piped=True)  # onMetaData's filesize is 0
    assert read_all(path) == (N, [])
    cut_to(path, starts[-1] + 40)
    missing = f"its last FLV tag \\(video\\) announces \\d+ bytes, the file has {starts[-1] + 40}$"
    with pytest.raises(SourceError, match=f"v.flv: truncated or corrupt video: .*; {missing}"):
        read_all(path)


def test_an_avi_whose_frames_span_several_slots_is_read_to_its_end_and_cut_is_still_truncated(tmp_path: Path) -> None:
    path = tmp_path / "v.avi"
    last = write(path, "avi", slots=20)[-1]
    assert finalised(path, "avi")
    assert read_all(path) == (N, [])
    cut_to(path, last)
    with pytest.raises(SourceError, match=f"truncated or corrupt video: decoding stopped after frame {N - 1} "):
        read_all(path)


@pytest.mark.parametrize("kind", ["file", "stream"])
@pytest.mark.parametrize("slots", [False, True])
def test_an_avi_written_to_a_pipe_announces_no_end_and_is_read_to_its_end(tmp_path: Path, slots: bool,
                                                                          kind: str) -> None:
    """Its RIFF size is unset and FFmpeg leaves 2^30 frames in its header: 42949672.96 s at 25 fps, 1789569.707 s
    on a 1/600 s time base."""
    path = tmp_path / "v.avi"
    if slots:
        write(path, "avi", piped=True, slots=20)
    else:
        write(path, "avi", piped=True)
    assert not finalised(path, "avi")
    assert read_all(path, kind) == (N, [])


def test_an_avi_whose_riff_size_was_left_0_is_not_finalised(tmp_path: Path) -> None:
    # a writer that never came back to its header may leave its RIFF size 0 rather than FFmpeg's 0xFFFFFFFF: no end
    # is announced either way
    path = tmp_path / "v.avi"
    write(path, "avi")
    assert finalised(path, "avi")
    data = bytearray(path.read_bytes())
    data[4:8] = bytes(4)
    path.write_bytes(bytes(data))
    assert not finalised(path, "avi")


def test_an_avi_written_to_a_pipe_and_cut_inside_a_frame_is_truncated(tmp_path: Path) -> None:
    path = tmp_path / "v.avi"
    starts = write(path, "avi", piped=True)
    cut_to(path, starts[-1] + 40)
    missing = f"its last RIFF chunk \\(00dc\\) announces \\d+ bytes, the file has {starts[-1] + 40}$"
    # the cut frame is damaged: not decoded into one (PyAV 17 stops at the frame held back before it too)
    with pytest.raises(SourceError, match=f"v.avi: truncated or corrupt video: decoding stopped after frame "
                                          f"({N - 1}|{N - 2}) .*; {missing}"):
        read_all(path)


def test_the_chunks_of_an_avi_never_finalised_end_where_they_say_pad_bytes_and_empty_frames_included(
        tmp_path: Path) -> None:
    path = tmp_path / "v.avi"
    movi = b"00dc" + bytes(4) + b"00dc\x03\x00\x00\x00abc\x00" + b"00dc\x05\x00\x00\x00abcde"  # empty, padded, last
    path.write_bytes(b"RIFF\xff\xff\xff\xffAVI LIST\xff\xff\xff\xffmovi" + movi)  # the last one's pad not written
    assert missing_end(path, "avi") is None
    cut_to(path, path.stat().st_size - 1)
    assert missing_end(path, "avi") == Cut(f"its last RIFF chunk (00dc) announces {path.stat().st_size + 1} bytes, the "
                                        f"file has {path.stat().st_size}", True)


def write_asf(path: Path, n: int = N, *, piped: bool = False) -> None:
    """``n`` WMV2 frames at 25 fps in ASF; piped: written live (its header's broadcast flag set, no sizes)."""
    target = _Pipe(path) if piped else str(path)
    with av.open(target, "w", format="asf") as container:
        stream = container.add_stream("wmv2", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(n):
            image = np.full((48, 64, 3), 10 * i, np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")))
        container.mux(stream.encode(None))
    if piped:
        target.close()


def test_an_asf_cut_short_is_truncated_one_written_live_says_nothing(tmp_path: Path) -> None:
    whole, live = tmp_path / "v.wmv", tmp_path / "live.wmv"
    write_asf(whole)
    write_asf(live, piped=True)
    assert read_all(whole) == (N, [])
    for path in (whole, live):
        cut_to(path, path.stat().st_size // 2)
    assert missing_end(live, "asf") is None
    with pytest.raises(SourceError, match="v.wmv: truncated or corrupt video: .*; its ASF header announces "):
        read_all(whole)


def test_the_file_size_of_an_asf_written_live_is_not_held_against_it(tmp_path: Path) -> None:
    """With the broadcast flag set the File Properties' sizes are not valid (the specification): a live writer may
    leave any number there, no end the file announced."""
    path = tmp_path / "live.wmv"
    write_asf(path, piped=True)
    data = bytearray(path.read_bytes())
    props = data.find(bytes.fromhex("a1dcab8c47a9cf118ee400c00c205365"))  # the File Properties object
    assert props > 0 and data[props + 88] & 1  # broadcast
    data[props + 40:props + 48] = (2 * len(data)).to_bytes(8, "little")  # a file size it never reached
    path.write_bytes(bytes(data))
    assert missing_end(path, "asf") is None
    data[props + 88] &= ~1  # the same size in a file not written live is its end
    path.write_bytes(bytes(data))
    assert missing_end(path, "asf") == Cut(f"its ASF header announces {2 * len(data)} bytes, the file has {len(data)}",
                                           True)


def test_a_video_of_one_frame_whose_rate_is_not_said_is_read_to_its_end(tmp_path: Path) -> None:
    """One ASF frame: no rate but the 1/1000 s time base's, so the frame was taken for 1 ms long, the file for cut."""
    path = tmp_path / "one.wmv"
    write_asf(path, 1)
    assert read_all(path) == (1, [])


TRAILERS = {"zero bytes": bytes(4), "a sector's padding": bytes(2048), "a text trailer": b"Recorded by XYZ v1.2\n",
            "random bytes": np.random.default_rng(1).bytes(37), "a JUNK chunk cut short": b"JUNK\0\0\1\0" + bytes(8),
            # a live WebM appended: its EBML header (whole), then a Segment of unknown size, which is no end
            "another recording's start": bytes.fromhex("1A45DFA3 84 42868101 18538067 01FFFFFFFFFFFFFF") + bytes(9)}


@pytest.mark.parametrize("fmt, piped", [("mp4", False), ("mp4", True), ("matroska", True), ("flv", False),
                                        ("flv", True), ("avi", False), ("avi", True), ("mpegts", False)])
@pytest.mark.parametrize("trailer", TRAILERS)
def test_bytes_after_the_last_whole_unit_are_reported_not_taken_for_a_cut(tmp_path: Path, fmt: str, piped: bool,
                                                                           trailer: str) -> None:
    """Whatever follows the container's last whole unit and is none of its units (a recorder's padding or trailer,
    something appended) may be a cut inside a header: reported, the frames read."""
    path, tail = tmp_path / f"v.{fmt}", TRAILERS[trailer]
    write(path, fmt, piped=piped, options={"movflags": "frag_keyframe+empty_moov"} if piped else None)
    path.write_bytes(path.read_bytes() + tail)
    n, warnings = read_all(path)
    assert n == N and len(warnings) == 1
    assert f"v.{fmt}: {len(tail)} unrecognised bytes follow its last whole " in warnings[0]
    assert warnings[0].endswith(f"frames after frame {N} may be missing")


def test_what_a_complete_file_may_end_with_is_no_cut(tmp_path: Path) -> None:
    """An AVI whose writer counted the RIFF header in its size, an FLV without its last PreviousTagSize (every frame
    whole), an MPEG-TS padded with the start of a null packet."""
    avi, flv, ts = tmp_path / "v.avi", tmp_path / "v.flv", tmp_path / "v.ts"
    for path in (avi, flv, ts):
        write(path, path.suffix[1:].replace("ts", "mpegts"))
    data = avi.read_bytes()
    avi.write_bytes(data[:4] + len(data).to_bytes(4, "little") + data[8:])
    assert missing_end(avi, "avi") is None and read_all(avi) == (N, [])
    flv.write_bytes(flv.read_bytes()[:-4])
    assert missing_end(flv, "flv") == Cut("its last FLV tag is not followed by its size (PreviousTagSize)", False)
    ts.write_bytes(ts.read_bytes() + b"\x47\x1f\xff\x10" + b"\xff" * 96)
    assert missing_end(ts, "mpegts") == Cut("100 unrecognised bytes follow its last whole MPEG-TS packet", False)


def test_a_container_whose_end_says_nothing_is_read_to_its_end_without_a_word(tmp_path: Path) -> None:
    """YUV4MPEG (``.y4m``), of no container this checks: nothing to hold its end to, nothing said."""
    path = tmp_path / "v.y4m"
    with av.open(str(path), "w", format="yuv4mpegpipe") as container:
        stream = container.add_stream("rawvideo", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for _ in range(N):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="bgr24")))
        container.mux(stream.encode(None))
    assert missing_end(path, "yuv4mpegpipe") is None and read_all(path) == (N, [])


def test_a_matroska_file_never_finalised_is_not_held_to_a_length_estimated_from_bit_rates(tmp_path: Path) -> None:
    """Written to a pipe with MP3 audio, it has no Duration: FFmpeg estimates one from the bit rates (seconds off),
    which is no end the container announced."""
    path = tmp_path / "v.mkv"
    target = _Pipe(path)
    with av.open(target, "w", format="matroska") as container:
        video, audio = container.add_stream("mpeg4", rate=25), container.add_stream("mp3", rate=44100, layout="mono")
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        rng = np.random.default_rng(0)
        for i in range(N):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 256, (48, 64, 3), np.uint8), format="bgr24")
            frame.pts, frame.time_base = i, Fraction(1, 25)
            container.mux(video.encode(frame))
            sound = av.AudioFrame.from_ndarray(np.zeros((1, 1152), np.float32), format="fltp", layout="mono")
            sound.sample_rate, sound.pts = 44100, i * 1152
            container.mux(audio.encode(sound))
        container.mux(video.encode(None) + audio.encode(None))
    target.close()
    assert not finalised(path, "matroska,webm")
    assert read_all(path) == (N, [])


@pytest.mark.parametrize("pad", [b"\0", b"\xff"])
def test_mpegts_padded_past_the_search_window_is_reported_not_taken_for_a_cut(tmp_path: Path, pad: bytes) -> None:
    # a recorder that writes whole blocks of a disc's sector fills the last one with zero or 0xFF bytes, more than
    # the last packets are looked for in: taken for a cut, a complete recording would stop the replay as truncated
    path = tmp_path / "v.ts"
    write(path, "mpegts")
    path.write_bytes(path.read_bytes() + pad * 8192)
    assert missing_end(path, "mpegts") == Cut("8192 unrecognised bytes follow its last whole MPEG-TS packet", False)
    n, warnings = read_all(path)
    assert n == N and len(warnings) == 1 and warnings[0].endswith(f"frames after frame {N} may be missing")


def test_a_matroska_file_cut_in_a_second_index_element_after_its_frames_is_read_whole(tmp_path: Path) -> None:
    """Writers put Tags, Chapters or a SeekHead after the Cues (mkvmerge, FFmpeg when the SeekHead outgrows its
    reserved space): a cut in the last of them, after another index element, still lies after every frame."""
    path = tmp_path / "v.mkv"
    write(path, "matroska")
    data = bytearray(path.read_bytes())
    ebml_size = data[4] & 0x7F if data[4] & 0x80 else None  # FFmpeg's EBML header: a 1-byte size
    assert ebml_size is not None and data[:4] == bytes.fromhex("1A45DFA3")
    segment = 5 + ebml_size  # the Segment's ID, then its size: an 8-byte EBML length
    assert data[segment:segment + 4] == bytes.fromhex("18538067") and data[segment + 4] == 0x01
    tags = bytes.fromhex("1254C367") + bytes([0x80 | 100]) + bytes.fromhex("7373") + bytes([0x80 | 96]) + bytes(96)
    size = int.from_bytes(data[segment + 5:segment + 12], "big") + len(tags)
    data[segment + 5:segment + 12] = size.to_bytes(7, "big")  # the segment holds the Tags appended after its Cues
    path.write_bytes(bytes(data) + tags[:60])  # cut 60 bytes into the Tags
    n, warnings = read_all(path)
    assert n == N and len(warnings) == 1
    assert re.search(r"cut in its index or metadata, after the frames: all \d+ frames it announces were read$",
                     warnings[0])


def test_a_matroska_file_cut_in_the_seekhead_before_its_clusters_is_cut_before_its_frames(tmp_path: Path) -> None:
    """FFmpeg writes a SeekHead first as well as (when it outgrows its space) after the Cues: a cut in the first one,
    before any cluster, is no cut after the frames, which a reader would let pass with a warning."""
    path = tmp_path / "v.mkv"
    write(path, "matroska")
    data = path.read_bytes()
    seekhead = data.find(bytes.fromhex("114D9B74"))
    assert 0 < seekhead < data.find(bytes.fromhex("1F43B675"))  # before the first Cluster
    cut_to(path, seekhead + 8)
    assert missing_end(path, "matroska,webm") == Cut(f"its Matroska segment announces {len(data)} bytes, the file "
                                                     f"has {seekhead + 8}", True)
    # a file that does not start as this reads Matroska is left to FFmpeg: its header's lengths are taken as they are
    path.write_bytes(b"\0" + data)
    assert finalised(path, "matroska,webm") and missing_end(path, "matroska,webm") is None


def _box(kind: bytes, payload: bytes, *, wide: bool = False, to_end: bool = False) -> bytes:
    """An MP4 box: its 32-bit size (0: it runs to the end of the file; 1: a 64-bit size follows), type, payload."""
    if wide:
        return struct.pack(">I4sQ", 1, kind, 16 + len(payload)) + payload
    return struct.pack(">I4s", 0 if to_end else 8 + len(payload), kind) + payload


def test_mp4_boxes_with_a_64_bit_size_or_running_to_the_end_of_the_file_end_where_they_say(tmp_path: Path) -> None:
    """An ``mdat`` over 4 GiB states a 64-bit size, and the last box may state none (size 0: to the end of the file):
    the file ends where it should, and a cut in a 64-bit one is certain; bytes after the last whole box that a
    padding box (``free``) is not are counted from the last box the file is known to hold."""
    path, ftyp = tmp_path / "v.mp4", _box(b"ftyp", b"isom" + bytes(4))
    path.write_bytes(ftyp + _box(b"mdat", bytes(100), wide=True) + _box(b"moov", bytes(40), to_end=True))
    assert missing_end(path, "mov,mp4,m4a,3gp,3g2,mj2") is None
    path.write_bytes(ftyp + _box(b"mdat", bytes(100), wide=True)[:-10])
    assert missing_end(path, "mov,mp4,m4a,3gp,3g2,mj2") == Cut(f"its last MP4 box (mdat) announces {len(ftyp) + 116} "
                                                               f"bytes, the file has {len(ftyp) + 106}", True)
    path.write_bytes(ftyp + _box(b"free", bytes(8)) + b"Recorded")
    assert missing_end(path, "mov,mp4,m4a,3gp,3g2,mj2") == Cut("24 unrecognised bytes follow its last whole MP4 box "
                                                               "(ftyp)", False)


# A live Matroska file built by hand: its EBML header, a Segment of unknown size (never finalised), Info, Tracks and a
# Cluster, each with a 1-byte size
_EBML_HEAD = bytes.fromhex("1A45DFA3 84 42868101 18538067 01FFFFFFFFFFFFFF")
_INFO = bytes.fromhex("1549A966 88") + bytes(8)
_TRACKS = bytes.fromhex("1654AE6B A0") + bytes(32)
_CLUSTER = bytes.fromhex("1F43B675 90") + b"\x11" * 16


def test_a_live_matroska_cut_inside_its_tracks_is_cut_certainly(tmp_path: Path) -> None:
    """Tracks is an element a segment holds: one that runs past the end of the file is a cut, and bytes after it
    follow it, not the Info before it."""
    path = tmp_path / "v.mkv"
    path.write_bytes(_EBML_HEAD + _INFO + _TRACKS + _CLUSTER)
    assert missing_end(path, "matroska,webm") is None
    tracks_end = len(_EBML_HEAD + _INFO + _TRACKS)
    cut_to(path, tracks_end - 10)
    assert missing_end(path, "matroska,webm") == Cut(f"its last Matroska element (Tracks) announces {tracks_end} "
                                                     f"bytes, the file has {tracks_end - 10}", True)
    path.write_bytes(_EBML_HEAD + _INFO + _TRACKS + b"Recorded")
    assert missing_end(path, "matroska,webm") == Cut("8 unrecognised bytes follow its last whole Matroska element "
                                                     "(Tracks)", False)


@pytest.mark.parametrize("tail", [
    bytes.fromhex("1F43B675"),  # an ID, its size cut off
    bytes.fromhex("1F43B675 01") + bytes(6),  # an 8-byte size cut after 7 bytes
    bytes(9) + b"\x80",  # a first byte 0, which starts no EBML length
], ids=["size cut off", "size cut inside", "no length"])
def test_an_element_header_cut_or_invalid_after_the_last_cluster_is_reported_not_a_certain_cut(tmp_path: Path,
                                                                                               tail: bytes) -> None:
    """A header whose size is not all there, or not one, says nothing of where its element ends: bytes after the last
    whole cluster (a cut inside a header, or something appended)."""
    path = tmp_path / "v.mkv"
    path.write_bytes(_EBML_HEAD + _INFO + _TRACKS + _CLUSTER + tail)
    assert missing_end(path, "matroska,webm") == Cut(f"{len(tail)} unrecognised bytes follow its last whole Matroska "
                                                     "element (Cluster)", False)
