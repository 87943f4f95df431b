"""The command-line options of the viewer and the Foxglove bridge that name the pipeline they watch and how they
reach it (the options of their own door, ``--max-connections`` and ``--allow-host``, are ``gate``'s)."""

from __future__ import annotations

import argparse

from streamfuse import connection_watch
from streamfuse.cli.args import key_options, seconds, text_arg
from streamfuse.wire import FUSED_PREFIX, STATS_PREFIX

__all__ = ["stream_options", "connect_options"]


def stream_options(parser: argparse.ArgumentParser, topic_help: str) -> None:
    """Add the pipeline's endpoint (positional), ``--topic`` (helped by ``topic_help``) and ``--stats-topic``."""
    parser.add_argument("endpoint", nargs="?", default="tcp://127.0.0.1:5555", help="the pipeline's endpoint")
    parser.add_argument("--topic", default=FUSED_PREFIX, type=text_arg, help=topic_help)
    parser.add_argument("--stats-topic", default=STATS_PREFIX, type=text_arg, help="stats topic (prefix)")


def connect_options(parser: argparse.ArgumentParser) -> None:
    """Add the CURVE keys (``--server-key``, ``--client-key``) and ``--name-wait``."""
    key_options(parser)
    parser.add_argument("--name-wait", type=seconds, default=connection_watch.NAME_WAIT_S, metavar="SECONDS",
                        help="give up after SECONDS without the pipeline's host name resolving (one started before "
                        "its pipeline's name exists waits for it; 0 = at once)")
