"""A ROS 2 bag in rosbag2's sqlite3 storage (``.db3``: the default up to ROS 2 Humble), read without writing to it.

Its ``topics`` table names each topic's message type and serialization (``cdr``); its ``messages`` table holds
each message's topic, the time rosbag2 received it and its bytes, read in that time's order as ``ros2 bag play``
plays them. The file is opened immutable: no lock, no journal, nothing written beside it.
"""

from __future__ import annotations

import os
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Iterator

__all__ = ["is_db3", "db3_messages", "db3_topics"]


def is_db3(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(".db3")


def _connect(path: str | os.PathLike) -> sqlite3.Connection:
    return sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro&immutable=1", uri=True)


def db3_topics(path: str | os.PathLike) -> dict[str, tuple[str, int]]:
    """Topic -> (message type, messages) of every topic of the bag.

    Raises:
        sqlite3.DatabaseError: not a bag (not a database, or without rosbag2's tables).
    """
    with closing(_connect(path)) as db:
        rows = db.execute("SELECT t.name, t.type, COUNT(m.id) FROM topics t LEFT JOIN messages m ON m.topic_id = t.id "
                          "GROUP BY t.id").fetchall()
    return {name: (kind, n) for name, kind, n in rows}


def db3_messages(path: str | os.PathLike, topics: tuple[str, ...]) -> Iterator[tuple[str, str, str, int, bytes]]:
    """(message type, serialization, topic, receive time ns, bytes) of the messages on ``topics``, in receive order.

    Raises:
        sqlite3.DatabaseError: not a bag, or damaged where the reading got to.
    """
    marks = ", ".join("?" * len(topics))
    with closing(_connect(path)) as db:
        for row in db.execute("SELECT t.type, t.serialization_format, t.name, m.timestamp, m.data FROM messages m "
                              f"JOIN topics t ON m.topic_id = t.id WHERE t.name IN ({marks}) "
                              "ORDER BY m.timestamp, m.id", topics):
            for value, what, kind in ((row[3], "time", int), (row[4], "data", bytes)):  # sqlite keeps any type
                if not isinstance(value, kind):
                    raise sqlite3.DatabaseError(f"a message on {row[2]} whose {what} is {_kind(value)}, not "
                                                f"{'an integer' if kind is int else 'bytes'}")
            yield row


def _kind(value: object) -> str:
    return "NULL" if value is None else {int: "an integer", float: "a real", str: "text"}.get(type(value), "bytes")
