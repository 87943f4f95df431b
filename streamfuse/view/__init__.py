"""Watching a running pipeline: a live web page (``python -m streamfuse view``) and a Foxglove bridge
(``python -m streamfuse foxglove``), both ordinary subscribers of the pipeline's ZeroMQ stream.

``feed`` holds the newest frames and stats for the page (the stats read by ``stats_in``, as the bridge reads them),
``server`` serves it (aiohttp) behind ``gate`` (a cap on connections, a deadline for a request), ``browser`` drives a
headless Chromium over the DevTools protocol (screenshots, the browser test), ``foxglove_bridge`` relays to Foxglove;
``options`` holds the command-line options both share.
Nothing is re-exported here: aiohttp and foxglove are optional, imported only by the modules that use them.
"""

__all__: list[str] = []
