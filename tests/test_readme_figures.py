"""The README's figures name the command that prints them, beside them, or add up from the code's sizes."""

from __future__ import annotations

import gc
import re
import tracemalloc
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_each_cpu_figure_names_the_bench_command_that_prints_it():
    # the live CPU row gave "about 0.8 ms of CPU a frame" for the loop's own work, which no command printed
    text = README.read_text(encoding="utf-8")
    blocks = re.split(r"\n\s*\n|\n(?=\|)", text)  # paragraphs, and each table row on its own
    orphans = [m.group(0) for block in blocks if "python -m streamfuse bench " not in block
               for m in re.finditer(r"\d[\d.]* ms of (?:[\w' ]+ )?CPU", block)]
    assert not orphans, f"CPU figures with no bench command beside them: {orphans}"


# figures measured by hand that no command prints: each went, its claim kept in words or with how to see it
_UNPRINTED = ("705 MB", "0.14-1.64 s", "58-128 ms", "186-276 ms", "258 idle connections", "dropped after 35 s",
              "off the CPU for a third of a second", "(about a second of an RTSP", "(a few seconds)", "1.6-1.9x",
              "stall after 7.8 s")
# figures whose command was only implied: the command that prints them is named within the same sentence
_NAMED = {"1.59x / 1.45x": "bench batch --frames 90", "27.1 frames/s": "bench batch --pairs 4 --frames 40",
          "1.4x the default's frame time": "bench fuse --device cpu --sizes 640x480 --frames 100 --image-guidance 1",
          "1.4x the frame time on CPU": "bench fuse --device cpu --sizes 640x480 --image-guidance 1",
          "+24.4 MiB": "bench subscriptions --flood 200000", "+22.2 MiB": "bench subscriptions --flood 200000 --ipc",
          "+300.8 MiB": "bench subscriptions --flood 20000 --peers 20",
          "2 workers 32.4 (2.13x)": "bench batch", "21.7 / 26.5": "bench batch --frames 90",
          "2 workers 10.0 (1.95x)": "bench batch --pairs 4 --frames 40 --set fuse.name=hclfuse",
          "0.88x (Ray 1 worker 38.4": "bench batch --set replay.overlap=true",
          "8.98-9.84 ms": "bench start --runs 2 --set fuse.name=max --set ir.fps=30",
          "73.2 / 74.0 µs": "bench client --reads 2000",
          "40.2 / 43.5 against 39.6 / 30.7": "bench replay --fuser max --frames 150"}


def test_the_figures_measured_by_hand_are_gone_and_the_implied_commands_named():
    text = " ".join(README.read_text(encoding="utf-8").split())
    assert not [figure for figure in _UNPRINTED if figure in text]
    for figure, command in _NAMED.items():
        at = text.index(figure)
        sentence = text[text.rfind(". ", 0, at):text.find(". ", at)]
        assert f"python -m streamfuse {command}" in sentence, figure


_ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth", "eleventh")


def test_the_looped_clips_example_adds_up():
    # each pass of the shorter clip began one frame after its own last, so its frame 0 met the longer clip's frame
    # (pass - 1) x the shorter span, within the longer one: the README said 15 on the eleventh pass, an odd frame a
    # drift of 2 frames a pass never reaches
    text = " ".join(README.read_text(encoding="utf-8").split())
    m = re.search(r"looped clips of (\d+) and (\d+) frames.*? drifted apart by (\d+) frames a pass, frame 0 pairing "
                  r"with frame (\d+) on the (\w+)[);]", text)
    assert m, "the README's example of looped clips of two spans is gone"
    short, long_, drift, frame = (int(g) for g in m.groups()[:4])
    passes = _ORDINALS.index(m.group(5))  # passes the shorter clip made before that one
    assert (drift, frame) == (long_ - short, short * passes % long_), m.group(0)


def test_each_frame_rate_beside_a_gpu_fusion_latency_says_which_rate_bench_fuse_printed():
    # on the GPU, bench fuse prints two rates: "N frames/s with 2 batches in flight (M at the median latency)"; the
    # row gave "without CUDA graphs 5.68 ms (184 frames/s", the in-flight rate beside a latency whose inverse is 176
    row = next(line for line in README.read_text(encoding="utf-8").splitlines() if line.startswith("| fusion, GPU |"))
    rates = re.findall(r"(\d+\.\d+) ms(?:, p99 [\d.]+ ms)? \((\d+) frames/s( at the median)?", row)
    assert rates, "the GPU fusion row's latencies and rates are gone"
    for latency, rate, at_median in rates:
        assert at_median and abs(int(rate) - 1000 / float(latency)) < 1, (latency, rate)


def _index_bytes_a_chunk(folder: Path, chunks: int = 400) -> float:
    """Bytes a recording's writer holds more for each chunk it writes (tracemalloc): MCAP's index entry of a chunk,
    kept until the file is finished."""
    from streamfuse.record_parts import PartWriter
    from streamfuse.recording import TOPICS, RecordConfig

    writer = PartWriter(folder / "index.mcap", "zstd", RecordConfig.chunk_mb, ("sensor_msgs/msg/Image", "ros2msg", b""),
                        tuple(TOPICS.values()))

    def write(first: int, count: int) -> None:
        for second in range(first, first + count):  # a chunk of a frame a source (its entry is the same for 30)
            for k, topic in enumerate(TOPICS.values()):
                writer.add(topic, 1_700_000_000_000_000_000 + second * 10**9 + k * 20_000_000, bytes(64), second)
            writer.flush()

    write(0, 20)  # the writer's buffers at their working size
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        write(20, chunks)
        gc.collect()
        return (tracemalloc.get_traced_memory()[0] - before) / chunks
    finally:
        tracemalloc.stop()
        writer.finish()


def test_the_recording_index_growth_adds_up(tmp_path):
    # the README gave "about 760 bytes a second at flush_s: 1, 66 MB a day" for a one-file recording's index in memory,
    # which no command prints: a chunk a second holds only where frames fill less than chunk_mb a second, and the demo's
    # fill 4 MiB 8 times a second; each figure is now the arithmetic of the code's sizes, and the entry's bytes measured
    import numpy as np

    from streamfuse.config import load_config
    from streamfuse.frames import Frame, optical_frame
    from streamfuse.recording import RecordConfig, encode_image

    text = " ".join(README.read_text(encoding="utf-8").split())
    m = re.search(r"index entry per chunk until the file is finished, about (\d+) bytes each, .*? a 640x480 IR frame "
                  r"of (\d+) bytes at (\d+) frames/s and a colour one of (\d+) bytes at (\d+), ([\d.]+) MB a second "
                  r"make at most ([\d.]+) chunks a second \(a chunk ends with the frame that takes it past "
                  r"`chunk_mb`\), "
                  r"at most ([\d.]+) kB of index a second, (\d+) MB a day in one file; "
                  r"a rig of (\d+) MiB a second or less writes a chunk a second, (\d+) MB a day\)", text)
    assert m, "the README's figures of a recording's index are gone"
    entry, ir_bytes, ir_fps, vis_bytes, vis_fps, rate, chunks, index_kb, day_mb, mib, day_slow = map(float,
                                                                                                   m.groups())
    demo = load_config("demo", [])
    frames = {s: Frame(s, 0, 0, np.zeros((c.height, c.width) + (3,) * (s == "vis"), np.uint8))
              for s, c in (("ir", demo.ir), ("vis", demo.vis))}
    assert (ir_bytes, vis_bytes) == tuple(len(encode_image(frames[s], optical_frame(s, c.frame_id)))
                                          for s, c in (("ir", demo.ir), ("vis", demo.vis)))  # as the recorder names it
    assert (ir_fps, vis_fps) == (demo.ir.fps, demo.vis.fps)
    per_s = ir_bytes * ir_fps + vis_bytes * vis_fps  # bytes of frames a second
    assert rate == round(per_s / 1e6, 1)
    assert mib == RecordConfig.chunk_mb and RecordConfig.flush_s == 1
    assert chunks == round(max(1 / RecordConfig.flush_s, per_s / (RecordConfig.chunk_mb * 2**20)), 1)
    assert index_kb == round(entry * chunks / 1e3, 1)
    assert abs(day_mb - entry * chunks * 86400 / 1e6) <= 5 and round(entry * 86400 / 1e6) == day_slow
    measured = _index_bytes_a_chunk(tmp_path)
    assert 0.75 * entry <= measured <= 1.25 * entry, measured
