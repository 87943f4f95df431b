"""A replay's publisher (``replay.publish``): its fused frames sent to subscribers as a live run sends them."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

__all__ = ["open_publisher", "closed_on_failure", "wait_subscriber"]

log = logging.getLogger(__name__)


def open_publisher(cfg: Any, capture_clock: str) -> Any:
    """The publisher of ``cfg.publish`` when ``replay.publish`` is set (the visible input's ``capture_clock``), else
    None. It sends no stats topic: it says so as it starts, and the replay's summary is logged."""
    if not cfg.replay.publish:
        return None
    from streamfuse.publish import Publisher

    frame_ids = {"ir": cfg.ir.frame_id, "vis": cfg.vis.frame_id}
    return Publisher(cfg.publish, frame_ids=frame_ids, capture_clock=capture_clock, stats=False)


@contextlib.contextmanager
def closed_on_failure(publisher: Any) -> Iterator[None]:
    """A block whose failure (a Ctrl-C too) closes ``publisher`` (None: there is none) before it goes on."""
    try:
        yield
    except BaseException:
        if publisher is not None:
            publisher.close()
        raise


def wait_subscriber(publisher: Any, cfg: Any) -> None:
    """With ``publish.wait_subscriber_s``: give a consumer started with the replay the first frame too."""
    wait = cfg.publish.wait_subscriber_s
    if publisher is not None and wait and not publisher.wait_for_subscriber(wait):
        log.warning("no subscriber of %s within %g s (publish.wait_subscriber_s); publishing anyway",
                    cfg.publish.topic, wait)
