"""The viewer page in a real browser (headless Chromium over the DevTools protocol) against a running pipeline.

Opt-in (``-m slow``): it needs Debian's ``chromium`` (``apt-get install chromium``), which ``make test`` does not
install, and skips with that reason where it is absent. Run: ``python -m pytest -m slow tests/test_view_browser.py``.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers_zmq import published_on

pytest.importorskip("aiohttp")
from streamfuse.view.browser import PAGE_STATE, Chromium, find_chromium  # noqa: E402
from streamfuse.view.feed import Feed  # noqa: E402
from streamfuse.view.server import serve  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PATIENCE_S = 60.0  # Chromium's start and the pipeline's on a loaded 2-core machine

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300),
              pytest.mark.skipif(find_chromium() is None, reason="needs Chromium (Debian: apt-get install chromium)")]


async def _wait(condition, what: str) -> None:  # noqa: ANN001
    deadline = time.monotonic() + PATIENCE_S
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {PATIENCE_S:g} s"
        await asyncio.sleep(0.02)


async def _watch(feed: Feed, shot: Path) -> None:
    served = await serve(feed, "127.0.0.1", 0)
    try:
        async with Chromium(start_timeout_s=PATIENCE_S) as browser:
            await browser.goto(f"http://127.0.0.1:{served.port}/")
            every_view = f"{PAGE_STATE} && Object.values({PAGE_STATE}.frames).every((n) => n > 0)"
            await browser.wait_for(every_view, PATIENCE_S)  # IR and visible previews and fused frames drawn
            caption = await browser.evaluate('document.getElementById("fused-cap").textContent')
            assert "ms since capture" in caption, caption  # a live source's capture times are the wall clock's
            updates = await browser.evaluate(f"{PAGE_STATE}.statsUpdates")
            await browser.wait_for(f"{PAGE_STATE}.statsUpdates >= {updates + 2}", PATIENCE_S)  # the stats update
            await browser.screenshot(shot)
            # a frozen tab gets at most the one message already on its way, however many frames arrive meanwhile
            await browser.freeze(True)
            sent, arrived = feed.sent, feed.versions["fused"]
            await _wait(lambda: feed.versions["fused"] >= arrived + 30, "30 fused frames while the tab is frozen")
            assert feed.sent <= sent + 1
            await browser.freeze(False)
            drawn = await browser.evaluate(f"{PAGE_STATE}.frames.fused")
            await browser.wait_for(f"{PAGE_STATE}.frames.fused > {drawn}", PATIENCE_S)  # and it goes on after
    finally:
        await served.cleanup()


def _demo() -> tuple[subprocess.Popen, str]:
    """The demo pipeline (fuse.name=max, stats every 0.5 s) on a free loopback port: its process and endpoint."""
    proc = subprocess.Popen([sys.executable, "-m", "streamfuse", "run", "--config", "demo", "--set",
                             "publish.endpoint=tcp://127.0.0.1:*", "--set", "fuse.name=max", "--set",
                             "telemetry.interval_s=0.5"], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        return proc, published_on(proc)
    except AssertionError:
        proc.kill()
        raise


def test_page_shows_frames_and_stats_of_a_running_pipeline_in_chromium(tmp_path):
    proc, endpoint = _demo()
    feed = Feed(endpoint, "fused/", "stats/")
    try:
        asyncio.run(_watch(feed, tmp_path / "page.png"))
        assert (tmp_path / "page.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        feed.close()
        proc.terminate()
        assert proc.wait(PATIENCE_S) == 0, proc.stderr.read()


async def _watch_it_stop(feed: Feed, proc: subprocess.Popen) -> None:
    served = await serve(feed, "127.0.0.1", 0)
    try:
        async with Chromium(start_timeout_s=PATIENCE_S) as browser:
            await browser.goto(f"http://127.0.0.1:{served.port}/")
            await browser.wait_for(f"{PAGE_STATE} && {PAGE_STATE}.shownFps > 0 && {PAGE_STATE}.statsUpdates > 0",
                                   PATIENCE_S)
            proc.terminate()  # no frame comes any more
            # the page said "shown 23.0 fps" and "30 ms since capture" for ever after its last frame
            text = 'document.getElementById("%s").textContent'
            await browser.wait_for(f"{PAGE_STATE}.shownFps === 0 && /shown 0\\.0 fps/.test({text % 'rates'}) && "
                                   f"/ [0-9]{{4,}} ms since capture/.test({text % 'fused-cap'})", PATIENCE_S)
    finally:
        await served.cleanup()


def test_a_page_whose_frames_stop_shows_none_drawn_and_the_last_frame_s_age_growing():
    proc, endpoint = _demo()
    feed = Feed(endpoint, "fused/", "stats/")
    try:
        asyncio.run(_watch_it_stop(feed, proc))
    finally:
        feed.close()
        proc.terminate()
        assert proc.wait(PATIENCE_S) == 0, proc.stderr.read()
