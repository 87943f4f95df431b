"""Looped inputs of different spans kept in step: each pass of the shorter one starts with the longer one's.

Each looped input starts again one frame after its own last; two inputs of 30 and 32 frames drifted apart by the
spans' difference each pass (the first's frame 0 paired with the second's frame 12 on its eleventh pass). Where every
input loops (``loop: true``, files, folders, recordings), the producers share each input's span (its first pass's,
from its first frame to the next pass's first), and every pass of an input begins the longest span after the one
before it: the shorter input waits, its next pass's times moved on by the difference (the longer input's last frames
then have no frame of their time to pair with), so frame 0 pairs with frame 0 at every pass. An input whose producer
ended for good before its span was known (its source failed, ``restart: false``) is waited for no longer: the others
go on with the spans known, said in one line (they waited for it until the run was stopped).
"""

from __future__ import annotations

from typing import Any, Callable

__all__ = ["LoopSpans", "PassStarts", "loop_spans"]

_WAIT_S = 0.05  # a shorter input's wait for the longer one's span, checked this often


_ENDED = -1  # the span of an input whose producer ended for good before it was known


class LoopSpans:
    """The spans (ns, 0 until known, :data:`_ENDED` where never to be) of the looped inputs named ``sections``, in
    shared memory of ``ctx``."""

    def __init__(self, ctx: Any, sections: list[str]) -> None:
        self._sections, self._spans = sorted(sections), ctx.RawArray("q", len(sections))
        self._said = ctx.RawArray("b", len(sections))  # by section: its passes' line is said (by any of its producers)

    def longest(self, section: str, span_ns: int, wait: Callable[[float], bool]) -> int | None:
        """Post ``section``'s span and give the longest of all, once every input's is known or never to be
        (:meth:`ended`); ``wait(s)`` waits for the others (True: stopped, then None)."""
        self._spans[self._sections.index(section)] = span_ns
        while not all(self._spans):
            if wait(_WAIT_S):
                return None
        return max(self._spans)

    def ended(self, section: str) -> None:
        """``section``'s producer ended for good: where its span is not known, the others wait for it no longer."""
        if section in self._sections and not self._spans[i := self._sections.index(section)]:
            self._spans[i] = _ENDED

    def first_word(self, section: str) -> bool:
        """Whether ``section``'s line on its passes is yet to be said: once by its producers, whichever restarts."""
        said, self._said[i] = self._said[i := self._sections.index(section)], 1
        return not said

    def never(self) -> list[str]:
        """The inputs whose span will never be known (:meth:`ended`)."""
        return [s for s, span in zip(self._sections, self._spans) if span == _ENDED]


def loop_spans(ctx: Any, cfgs: dict[str, Any]) -> LoopSpans | None:
    """Where more than one input loops, and all of them (``SourceConfig``), the spans they share; else None."""
    if len(cfgs) > 1 and all(cfg.replayable and cfg.loop for cfg in cfgs.values()):
        return LoopSpans(ctx, list(cfgs))
    return None


class PassStarts:
    """Where one input's passes start: ``held_ns``, what the times of its current pass are moved by."""

    def __init__(self) -> None:
        self.held_ns = 0
        self._first_ns: int | None = None  # the first pass's first frame, on the source's own times
        self._spans: tuple[int, int] | None = None  # (its own span, the longest), ns

    def begin(self, lap: int, t_ns: int, spans: LoopSpans | None, section: str, where: str,
              wait: Callable[[float], bool], warn: Callable[[str], None]) -> None:
        """Pass ``lap`` (counted from 1) begins at ``t_ns`` on the source's own times: it starts the longest span
        after the pass before (``section`` named in ``spans``, waiting with ``wait``; where this input is the shorter,
        one line naming it, ``where``, to ``warn``, once for all of its producers)."""
        if spans is None or self._first_ns is None:
            self._first_ns = t_ns
            return
        if self._spans is None:
            own = t_ns - self._first_ns
            if (longest := spans.longest(section, own, wait)) is None:
                return
            self._spans = own, longest
            # a restarted producer resumes where its predecessor said it (in the wait, before the pass's first frame)
            warn = warn if spans.first_word(section) else lambda line: None
            if ended := spans.never():
                warn(f"{where}: its passes go on without waiting for {', '.join(ended)}, whose producer ended for "
                     f"good before its first pass did (its span unknown)")
            if longest > own:
                warn(f"{where}: its passes span {own / 1e9:.3f} s, another looped input's {longest / 1e9:.3f} s: "
                     f"each of its passes waits {(longest - own) / 1e9:.3f} s after its last frame, so that both "
                     f"start together (the longer input's last frames have no frame of their time to pair with)")
        # never less than before: a pass longer than the longest span (a looped file copied over by a longer one)
        # starts late rather than before the frames of the pass before it
        self.held_ns = max(self.held_ns, (lap - 1) * self._spans[1] - (t_ns - self._first_ns))
