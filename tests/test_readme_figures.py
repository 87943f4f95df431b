"""The README's CPU figures name the benchmark command that prints them, beside them."""

from __future__ import annotations

import re
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
          "+26.7 MiB": "bench subscriptions --flood 200000",
          "+300.8 MiB": "bench subscriptions --flood 20000 --peers 20"}


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
