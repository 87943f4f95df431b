"""The frames counter of a Ray batch: the frames its workers fuse, for the driver's bar, and the outputs they fused
into, which tell a pair this batch finished from one another run did."""

from __future__ import annotations

from typing import Any

__all__ = ["Progress", "fused_in_this_batch"]


def fused_in_this_batch(progress: Any, out: str) -> bool:
    """Whether a worker of this batch reported frames fused into ``out`` (False once the counter is lost)."""
    import ray

    try:
        return ray.get(progress.fused.remote(out))
    except ray.exceptions.RayError:
        return False


class Progress:
    """Ray actor that adds up the frames the workers report, per output; the driver takes the counts to update its bar
    and to know the outputs its batch fused into. It keeps those outputs since the batch began (``reset``), so that a
    pair found complete at its turn is told done by this batch (a retry after its worker was lost as it finished) from
    completed by another run."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.outputs: set[str] = set()

    def add(self, n: int, out: str) -> None:
        self.counts[out] = self.counts.get(out, 0) + n
        self.outputs.add(out)

    def take(self) -> dict[str, int]:
        """The frames fused per output since the last take."""
        counts, self.counts = self.counts, {}
        return counts

    def fused(self, out: str) -> bool:
        return out in self.outputs

    def reset(self) -> None:
        self.outputs.clear()
