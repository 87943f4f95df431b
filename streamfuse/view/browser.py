"""A headless Chromium driven over the DevTools protocol (aiohttp's WebSocket client): screenshots of the viewer
page and the browser test, with no browser driver package.

Uses the system's ``chromium`` (Debian: ``apt-get install chromium``), or the one named by ``$STREAMFUSE_CHROMIUM``.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from streamfuse.atomic_write import write_file

__all__ = ["Chromium", "find_chromium", "capture"]

_NAMES = ("chromium", "chromium-browser", "google-chrome", "chrome")
# Headless, with no background traffic of its own: only the page under test talks to the network.
_FLAGS = ("--headless", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
          "--disable-component-update", "--disable-sync", "--disable-extensions", "--mute-audio",
          "--window-size=1400,1000", "--remote-debugging-port=0")


def find_chromium() -> str | None:
    """Path of the Chromium executable, or None when there is none."""
    named = os.environ.get("STREAMFUSE_CHROMIUM")
    if named:
        return shutil.which(named)
    return next((path for name in _NAMES if (path := shutil.which(name))), None)


class Chromium:
    """One headless Chromium with one page; an async context manager.

    Raises:
        RuntimeError: no Chromium, or it did not start within ``start_timeout_s`` (one line).
    """

    def __init__(self, start_timeout_s: float = 30.0) -> None:
        self.start_timeout_s = start_timeout_s
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future] = {}

    async def __aenter__(self) -> Chromium:
        exe = find_chromium()
        if exe is None and os.environ.get("STREAMFUSE_CHROMIUM"):
            raise RuntimeError(f"STREAMFUSE_CHROMIUM={os.environ['STREAMFUSE_CHROMIUM']}: no such executable")
        if exe is None:
            raise RuntimeError("no Chromium found (Debian: apt-get install chromium; or set STREAMFUSE_CHROMIUM)")
        self._profile = tempfile.TemporaryDirectory(prefix="streamfuse-chromium-")
        flags = [*_FLAGS, f"--user-data-dir={self._profile.name}"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            flags.append("--no-sandbox")  # Chromium refuses to start its sandbox as root
        self._proc = await asyncio.create_subprocess_exec(exe, *flags, "about:blank", stdin=asyncio.subprocess.DEVNULL,
                                                          stdout=asyncio.subprocess.DEVNULL,
                                                          stderr=asyncio.subprocess.DEVNULL)
        self._http = aiohttp.ClientSession()
        try:
            port = await self._devtools_port()
            async with self._http.get(f"http://127.0.0.1:{port}/json/list") as resp:
                targets = await resp.json()
            url = next(t["webSocketDebuggerUrl"] for t in targets if t.get("type") == "page")
            self._ws = await self._http.ws_connect(url, max_msg_size=0)
        except BaseException:
            await self._stop()
            raise
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._reader.cancel()
        await self._stop()

    async def _stop(self) -> None:
        await self._http.close()
        if self._proc.returncode is None:
            self._proc.terminate()
            try:
                await asyncio.wait_for(self._proc.wait(), 5)
            except asyncio.TimeoutError:
                self._proc.kill()
                await self._proc.wait()
        self._profile.cleanup()

    async def _devtools_port(self) -> int:
        """Chromium writes the port it picked into the profile's DevToolsActivePort file."""
        path = Path(self._profile.name) / "DevToolsActivePort"
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self._proc.returncode is not None:
                raise RuntimeError(f"Chromium exited at start (status {self._proc.returncode})")
            text = path.read_text() if path.exists() else ""
            if text.endswith("\n") or len(text.splitlines()) >= 2:
                return int(text.splitlines()[0])
            await asyncio.sleep(0.05)
        raise RuntimeError(f"Chromium did not open its DevTools port within {self.start_timeout_s:g} s")

    async def _read(self) -> None:
        async for msg in self._ws:
            reply = json.loads(msg.data)
            future = self._pending.pop(reply.get("id"), None)
            if future is not None and not future.done():
                future.set_result(reply)
        for future in self._pending.values():
            future.set_exception(RuntimeError("Chromium closed the DevTools connection"))

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        """One DevTools command; its ``result``. Raises RuntimeError with the protocol's error message."""
        msg_id = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._pending[msg_id] = future
        await self._ws.send_str(json.dumps({"id": msg_id, "method": method, "params": params}))
        reply = await future
        if "error" in reply:
            raise RuntimeError(f"Chromium: {method}: {reply['error'].get('message')}")
        return reply["result"]

    async def goto(self, url: str) -> None:
        """Open ``url`` in the page."""
        await self.call("Page.enable")
        await self.call("Page.navigate", url=url)

    async def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression in the page (None while the page has not defined it)."""
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result.get("result", {}).get("value")

    async def wait_for(self, expression: str, timeout_s: float, failure: str = "") -> Any:
        """Poll ``expression`` until it is truthy; its value. Raises RuntimeError after ``timeout_s``, saying
        ``failure`` (default: which expression was not reached)."""
        deadline = time.monotonic() + timeout_s
        while not (value := await self.evaluate(expression)):
            if time.monotonic() > deadline:
                raise RuntimeError(failure or f"the page did not reach `{expression}` within {timeout_s:g} s")
            await asyncio.sleep(0.05)
        return value

    async def screenshot(self, path: Path) -> Path:
        """Write the page as PNG to ``path``, or beside it as ``NAME-2.png``, ... when it exists (never over a file,
        as subscribe --save); returns the path written.

        Raises:
            RuntimeError: it cannot be written (one line; written through a temporary name, so never half a PNG).
        """
        data = (await self.call("Page.captureScreenshot", format="png"))["data"]
        return write_file(path, base64.b64decode(data), new=True)

    async def freeze(self, frozen: bool) -> None:
        """Freeze the page (no JavaScript runs, as in a background tab the browser froze), or resume it."""
        await self.call("Page.setWebLifecycleState", state="frozen" if frozen else "active")


PAGE_STATE = "window.streamfuse"


async def capture(url: str, path: Path, watch_s: float, timeout_s: float = 30.0, *,
                  source: str = "the pipeline") -> tuple[Path, str]:
    """Open the viewer at ``url``, wait for a fused frame (not for the IR and visible panels) and two stats updates,
    watch for ``watch_s`` seconds, write a PNG screenshot to ``path`` (``NAME-2.png``, ... when it exists); returns the
    path written and what the page measured, in one line.

    Raises:
        RuntimeError: no frames or stats from ``source`` (the pipeline's endpoint) within ``timeout_s`` (one line).
    """
    async with Chromium() as browser:
        await browser.goto(url)
        await browser.wait_for(f"{PAGE_STATE} && {PAGE_STATE}.frames.fused > 0", timeout_s,
                               f"no frames arrived from {source} within {timeout_s:g} s: is the pipeline running?")
        # before the watch: the frames drawn while the stats come (up to two of their intervals) are not the watch's
        await browser.wait_for(f"{PAGE_STATE}.statsUpdates >= 2", timeout_s,
                               f"fewer than 2 stats messages arrived from {source} within {timeout_s:g} s")
        start = await browser.evaluate(PAGE_STATE)
        await asyncio.sleep(watch_s)
        end = await browser.evaluate(PAGE_STATE)
        written = await browser.screenshot(path)
    shown = (end["frames"]["fused"] - start["frames"]["fused"]) / watch_s
    return written, (f"first fused frame {end['firstFrameMs']:.0f} ms after the page opened, {shown:.1f} frames/s "
                     f"shown over {watch_s:g} s, frames IR/vis/fused {end['frames']['ir']}/{end['frames']['vis']}/"
                     f"{end['frames']['fused']}, {end['statsUpdates']} stats updates")
