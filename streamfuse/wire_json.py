"""JSON as the wire carries it: compact UTF-8 out (numpy numbers as plain ones); in, one object parsed strictly and
what consumers pass on of it bounded (:mod:`streamfuse.wire` checks the fields)."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import zmq

__all__ = ["MalformedMessage", "encode_json", "parse_object", "check_tree"]

_MAX_DEPTH = 8  # of what consumers pass on: a stats snapshot is 4 deep (stats, stages, a stage, its numbers)


class MalformedMessage(ValueError):
    """A message that does not follow the wire format; the text is one line saying what is wrong."""


def encode_json(obj: dict[str, Any]) -> bytes:
    """A header or stats object as compact UTF-8 JSON (numpy scalars and arrays as plain numbers and lists)."""
    return _json_encoder.encode(obj).encode()


def parse_object(part: bytes | zmq.Frame, what: str) -> dict[str, Any]:
    """``part`` as a JSON object; raises MalformedMessage saying why it is none (``what``: the part's name)."""
    raw = part.bytes if isinstance(part, zmq.Frame) else bytes(part)
    if raw[:1] == b"{" and raw[1:2] != b"\0":  # what json.loads reads as UTF-8; without its encoding sniffing
        try:
            text = raw.decode("utf-8", "surrogatepass")
            obj, end = _json_decoder.raw_decode(text)
        except (ValueError, RecursionError):
            text, end = "", -1
        if end == len(text) and isinstance(obj, dict):  # else json.loads below says what is wrong (or accepts it)
            return obj
    try:
        obj = json.loads(raw)
    except RecursionError:
        raise MalformedMessage(f"{what} JSON is nested too deeply") from None
    except ValueError as exc:  # also UnicodeDecodeError, JSONDecodeError and integers of more than 4300 digits
        raise MalformedMessage(f"{what} is not UTF-8 JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise MalformedMessage(f"{what} is JSON {type(obj).__name__}, expected an object")
    return obj


def check_tree(tree: dict[str, Any], what: str) -> None:
    """What consumers pass on (a page's ``JSON.parse``, Foxglove) is nested at most ``_MAX_DEPTH`` deep and holds no
    NaN or infinity (JSON's ``NaN``, ``Infinity``, ``1e999``); walked level by level, never recursively."""
    level: list[Any] = [tree]
    for _ in range(_MAX_DEPTH):
        if any(isinstance(v, float) and not math.isfinite(v) for v in level):
            raise MalformedMessage(f"{what} hold NaN or an infinite number")
        children = [obj.values() if isinstance(obj, dict) else obj for obj in level if isinstance(obj, (dict, list))]
        level = [value for values in children for value in values]
        if not level:
            return
    raise MalformedMessage(f"{what} are nested more than {_MAX_DEPTH} deep")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.generic, np.ndarray)):  # a numpy scalar's tolist() is its Python number
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


_json_decoder = json.JSONDecoder()  # json.loads's own, which it reaches through a few Python calls a message
_json_encoder = json.JSONEncoder(separators=(",", ":"), default=_json_default)  # made once: ~1.5 us a frame
