"""What a replay reports: ReplaySummary (counts, stage timings, why it stopped), ReplayError and the stage clock."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from streamfuse.errors import printable
from streamfuse.frames import STREAM_NAMES
from streamfuse.stage_samples import StageSamples
from streamfuse.replay.left_frames import LeftFrames
from streamfuse.sync import OTHER, Pairer

__all__ = ["ReplaySummary", "ReplayError", "StageClock", "STAGES", "each_thread"]

# Decoding and encoding run on worker threads: "decode" and "encode" are the loop's waits on them (what limits
# throughput); "decode_thread" and "encode_thread" are those threads' own time per frame, which overlaps the loop
# (so shares can add up to more than 100%); a stage timed on several threads at once (the two decoders) gives its
# share per thread, each at most 100% of a core.
STAGES = ("decode", "pair", "fuse", "postprocess", "encode", "publish", "decode_thread", "encode_thread")


@dataclass
class ReplaySummary:
    """What a replay did. Times in seconds, stage latencies in ms; ``share`` is the stage's part of wall time."""

    ir: str
    vis: str
    out: str
    complete: bool = False
    found_complete: bool = False  # complete before this run took its output: it fused and moved nothing
    stopped: str = ""  # why the run ended early; empty when complete
    late_stop: int = 0  # a stop signal that came as the complete output took its name: left to the caller (a batch)
    encoder: str = ""
    frames: dict[str, int] = field(default_factory=lambda: {"ir": 0, "vis": 0})  # frames read per source
    pairs: int = 0  # pairs formed by the Pairer
    fused: int = 0
    reused: int = 0  # frames taken over from a partial output (resume)
    nonfinite: int = 0  # fused frames with a NaN or infinite pixel (a fuser's fault; written clipped, NaN as black)
    written: int = 0
    published: int = 0  # frames sent to subscribers (publish.endpoint set)
    publish_refused: int = 0  # frames a nodrop publisher refused: a subscriber's queue stayed full for wait_ms
    unpaired: dict[str, int] = field(default_factory=lambda: {"ir": 0, "vis": 0})
    dropped: dict[str, int] = field(default_factory=lambda: {"ir": 0, "vis": 0})
    # unpaired frames outside the other input's time span, per stream: {"before": n, "after": n}
    outside: dict[str, dict[str, int]] = field(default_factory=lambda: {s: {"before": 0, "after": 0} for s in OTHER})
    note: str = ""  # what the unequal inputs did (which ended first, how many frames were left unpaired)
    wall_s: float = 0.0
    fps: float = 0.0  # written frames per wall second
    stages: dict[str, dict[str, float]] = field(default_factory=dict)

    def format(self) -> str:
        """The summary as one log block."""
        state = "complete" if self.complete else f"NOT complete: {self.stopped}"
        lines = [  # the paths' control characters as escapes: the block's lines are its own
            printable(f"replay {self.ir} + {self.vis} -> {self.out} ({state})"),
            f"  read ir {self.frames['ir']}, vis {self.frames['vis']} | pairs {self.pairs} | fused {self.fused}"
            f" | reused {self.reused} | written {self.written} | unpaired ir {self.unpaired['ir']}, vis "
            f"{self.unpaired['vis']} | dropped ir {self.dropped['ir']}, vis {self.dropped['vis']}",
            *([f"  published {self.published} | refused by the publisher {self.publish_refused} (a subscriber's queue "
               f"stayed full)"] if self.published or self.publish_refused else []),
            *([f"  nonfinite {self.nonfinite} (fused frames with a NaN or infinite pixel)"] if self.nonfinite else []),
            *([f"  note: {printable(self.note)}"] if self.note else []),
            f"  wall {self.wall_s:.2f} s, {self.fps:.1f} frames/s, encoder {self.encoder or '-'}",
            f"  {'stage':<14}{'median ms':>10}{'p99 ms':>10}{'share':>8}",
        ]
        lines += [f"  {name:<14}{s['median_ms']:>10.2f}{s['p99_ms']:>10.2f}{s['share']:>8.1%}{each_thread(s)}"
                  for name, s in self.stages.items()]
        return "\n".join(lines)

    def take_pairer(self, pairer: Pairer, left: LeftFrames) -> None:
        """The pairer's unpaired and dropped counts, told apart by the verdicts on the frames it left (``left``, every
        frame read and left told, then :meth:`LeftFrames.end`). Those outside the other stream's span (its first ..
        last frame read, widened by the pairing tolerance) count as ``outside``: a recording read in recorded order
        learns its streams' spans only at its end, and the frames past one stream's end waited in the pairer's queue
        for a partner, overflowing it as drops. A frame dropped with no frame of the other stream within the
        tolerance (that camera paused) could never pair: unpaired, so ``dropped`` counts only frames a longer queue
        might have paired."""
        stats = pairer.stats()
        for stream in OTHER:
            verdicts = left.verdicts[stream]
            counts = {outcome: stats[stream][outcome] for outcome in ("unpaired", "dropped")}
            for side in ("before", "after"):
                for outcome, n in verdicts[side].items():
                    self.outside[stream][side] += n
                    counts[outcome] -= n
            counts["dropped"], counts["unpaired"] = counts["dropped"] - verdicts["lone"], \
                counts["unpaired"] + verdicts["lone"]
            self.unpaired[stream] = counts["unpaired"] + sum(self.outside[stream].values())
            self.dropped[stream] += counts["dropped"]

    def unequal_note(self) -> str:
        """What inputs of different spans did: which one started later or ended first, and the frames left unpaired."""
        notes = []
        for stream, other in OTHER.items():
            before, after = self.outside[stream]["before"], self.outside[stream]["after"]
            if before and self.frames[other]:  # an input without frames does not start later: it has no start
                notes.append(f"the {STREAM_NAMES[other]} input starts later: {before} {STREAM_NAMES[stream]} frames "
                             f"before its first frame are unpaired")
            if after:
                notes.append(f"the {STREAM_NAMES[other]} input ended first (after {self.frames[other]} frames): "
                             f"{after} {STREAM_NAMES[stream]} frames after its end are unpaired")
        return "; ".join(notes)


class ReplayError(RuntimeError):
    """A replay that did not finish; the message is one line and says where the partial output is, then ``hint``
    (how to continue this one replay; a batch gives its own)."""

    def __init__(self, message: str, summary: ReplaySummary | None = None, *, interrupted: bool = False,
                 hint: str = ""):
        super().__init__(f"{message}; {hint}" if hint else message)
        self.message = message
        self.summary = summary
        self.interrupted = interrupted  # Ctrl-C or SIGTERM: a batch should stop too


class StageClock:
    """Per-stage durations (ns) for the summary, at most ``kept`` a stage (see :class:`StageSamples`)."""

    def __init__(self, kept: int | None = None) -> None:
        self.ns: dict[str, StageSamples] = {s: StageSamples(kept) for s in STAGES}
        self.threads: dict[str, int] = {}  # stages timed on that many threads at once: their share is per thread
        self._t = 0

    def start(self) -> None:
        self._t = time.perf_counter_ns()

    def add(self, timings: dict[str, float]) -> dict[str, float]:
        """Record stage times measured elsewhere (ms, e.g. the frame processor's) and restart the lap; returns them."""
        for stage, ms in timings.items():
            self.ns[stage].append(round(ms * 1e6))
        self.start()
        return dict(timings)

    def lap(self, stage: str) -> float:
        """Record the time since the last start/lap under ``stage``; returns it in ms."""
        now = time.perf_counter_ns()
        took, self._t = now - self._t, now
        self.ns[stage].append(took)
        return took / 1e6

    def table(self, wall_s: float) -> dict[str, dict[str, float]]:
        out = {}
        for stage, samples in self.ns.items():
            if samples:
                ms, total_s, threads = samples.kept() / 1e6, samples.total / 1e9, self.threads.get(stage, 1)
                out[stage] = {"median_ms": float(np.median(ms)), "p99_ms": float(np.percentile(ms, 99)),
                              "total_s": total_s, "share": total_s / max(wall_s, 1e-9) / threads,
                              **({"threads": threads} if threads > 1 else {})}
        return out


def each_thread(stage: dict[str, float]) -> str:
    """What a stage's share is of, where it is timed on several threads (:attr:`StageClock.threads`); ''."""
    return f" each of {stage['threads']} threads" if "threads" in stage else ""
