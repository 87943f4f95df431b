"""Config validation primitives every stage uses: the range check, typed sections from mappings, dotted overrides.

A leaf: it imports nothing from the package, so stage modules (which own their config dataclasses) and
:mod:`streamfuse.config` (which composes them) can both import it without a circle.

>>> from dataclasses import dataclass
>>> @dataclass(frozen=True)
... class Demo:
...     rate: float = 1.0
>>> parse_section(Demo, apply_overrides({}, ["demo.rate=1e-3"])["demo"], "demo")
Demo(rate=0.001)
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import reprlib
import types
import typing
from collections.abc import Collection, Iterable, Mapping
from typing import Any, Literal

import yaml

__all__ = ["ConfigError", "check", "shown", "key_shown", "tcp_port_ok", "parse_section", "apply_overrides", "load_yaml",
           "dump_yaml", "yaml_reason", "yaml_value", "ValueNotTaken", "did_you_mean", "override_keys"]


class ConfigError(ValueError):
    """A config that cannot run: the message is one line naming the key, the file and the allowed values."""


def check(ok: bool, key: str, value: Any, allowed: str) -> None:
    """Range check for ``__post_init__``: raise ValueError naming the key, the bad value and what is allowed."""
    if not ok:
        raise ValueError(f"{key}={shown(value)} is out of range; allowed: {allowed}")


def tcp_port_ok(endpoint: str, *, bind: bool = False) -> bool:
    """False for a ``tcp://`` ZeroMQ endpoint without a port of 1..65535 (``*`` or 0 too when binding: any free
    port), which libzmq would take modulo 65536 (``:70000`` is port 4464); other transports pass.

    >>> tcp_port_ok("tcp://127.0.0.1:70000"), tcp_port_ok("tcp://*:*", bind=True), tcp_port_ok("ipc:///tmp/s")
    (False, True, True)
    """
    scheme, _, address = endpoint.partition("://")
    port = address.rpartition(":")[2]
    if scheme != "tcp" or (bind and port == "*"):
        return True
    return port.isascii() and port.isdigit() and (bind or int(port) > 0) and int(port) < 65536


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that reads numbers as YAML 1.2 does: ``1e-3``, ``-2e5`` and ``1E3`` are floats (PyYAML's
    YAML 1.1 resolver wants a dot and a signed exponent, and keeps them as strings), ``010`` is ten (not octal 8) and
    ``1:30`` is text (not sexagesimal 90); it refuses a key given twice in one mapping (PyYAML keeps the last one
    silently, so an edit lower in the file would quietly undo one above), while a merge key's (``<<: *base``) keys
    may be overridden there, as YAML means them to be."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}  # key -> the line it is first on
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # the merged mapping's keys give way to this one's
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, typing.Hashable):
                continue  # SafeLoader's own error names it
            if key in seen:  # the mark says where the second is
                raise yaml.constructor.ConstructorError(None, None, f"key {shown(key)} is given twice (first on line "
                                                        f"{seen[key]})", key_node.start_mark)
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        text = self.construct_scalar(node).replace("_", "")
        base = {"0x": 16, "0o": 8}.get(text[:2], 10)
        return int(text[2:] if base != 10 else text, base)

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except _CONSTRUCTOR_FAULTS:  # `0x_`, 5000 digits, `2024-13-01`, `!!float`, `!!bool maybe`
            tag = node.tag.rpartition(":")[2]
            value = shown(node.value) if isinstance(node, yaml.ScalarNode) else "the value"
            raise ValueNotTaken(None, None, f"{value} is not {_WANTED.get(tag, f'a !!{tag}')}",
                                node.start_mark) from None


class ValueNotTaken(yaml.constructor.ConstructorError):
    """Valid YAML of a value that is not what it looks like or is tagged as (``0x_``, ``2024-13-01``, ``!!bool
    maybe``): said with its line, as YAML's own errors are."""


#: What PyYAML's constructors raise on a scalar they cannot read, and the words for what it should have been.
_CONSTRUCTOR_FAULTS = (ValueError, LookupError, TypeError, AttributeError)
_WANTED = {"int": "a number this reader takes", "float": "a number this reader takes", "timestamp": "a date",
           "bool": "a boolean"}

_INT, _FLOAT = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"
_Loader.yaml_implicit_resolvers = {first: [(tag, regexp) for tag, regexp in resolvers if tag not in (_INT, _FLOAT)]
                                   for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver(_INT, re.compile(r"^(?:[-+]?[0-9][0-9_]*|0x[0-9a-fA-F_]+|0o[0-7_]+)$"),
                              list("-+0123456789"))
_Loader.add_implicit_resolver(_FLOAT, re.compile(r"^(?:[-+]?(?:[0-9][0-9_]*\.[0-9_]*|\.[0-9][0-9_]*)"
                                                 r"(?:[eE][-+]?[0-9]+)?|[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+"
                                                 r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"), list("-+0123456789."))
_Loader.add_constructor(_INT, _Loader.construct_yaml_int)


class _Dumper(yaml.SafeDumper):
    """``yaml.SafeDumper`` that quotes text either reader would take for a number: this module's (``1e-3``) or
    PyYAML's own (``1:30``), so a written config reads back as it was whoever reads it."""


_Dumper.yaml_implicit_resolvers = {first: _Loader.yaml_implicit_resolvers.get(first, []) + resolvers
                                   for first, resolvers in yaml.SafeDumper.yaml_implicit_resolvers.items()}


def load_yaml(text: str) -> Any:
    """Parse YAML text as the configs are read (safe, numbers as YAML 1.2 reads them, no key given twice)."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)
    except _CONSTRUCTOR_FAULTS as exc:  # a mapping's or list's contents are built after its node's construct_object
        raise ValueNotTaken(None, None, f"a tagged value this reader cannot read ({type(exc).__name__})") from None


def dump_yaml(data: Any) -> str:
    """YAML text of data, in the order given, that :func:`load_yaml` and ``yaml.safe_load`` both read back as it is."""
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False)


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if origin is tuple:
        return "list of " + _describe(typing.get_args(tp)[0])
    if dataclasses.is_dataclass(tp):
        return "mapping with keys " + ", ".join(f.name for f in dataclasses.fields(tp))
    return getattr(tp, "__name__", str(tp))


_SHOWN = reprlib.Repr()
_SHOWN.maxlevel = 2
_SHOWN.maxlist = _SHOWN.maxdict = 4
_SHOWN.maxstring = _SHOWN.maxother = 80
_SHOWN.maxlong = 40


def shown(value: Any) -> str:
    """``repr(value)`` cut short, as every error line quotes a value: a YAML alias bomb shares its lists, and its full
    text would never end; a peer's forged header field may be 60 kB long."""
    return _SHOWN.repr(value)


def did_you_mean(key: Any, names: Iterable[str], homes: Mapping[str, Collection[str]] | None = None) -> str:
    """``" (did you mean ir.fps or vis.fps?)"`` for a key of other sections (``homes``: section -> its keys) given in
    the wrong one, else ``" (did you mean fps?)"`` for a key one or two letters off a known name; "" when none. The
    key found as it is wins: ``ir.weights`` is hclfuse's, not a misspelt ``height``."""
    text = str(key).strip()
    names = list(names)
    near = difflib.get_close_matches(text.lower(), names, n=1, cutoff=0.75) or _one_edit(text.lower(), names)
    elsewhere = [f"{section}.{text}" for section, keys in (homes or {}).items() if text in keys]
    said = [text] if text in names else elsewhere or near[:1]  # its own, but for a space (a pasted no-break space)
    return f" (did you mean {' or '.join(said)}?)" if said else ""


def _one_edit(text: str, names: Iterable[str]) -> list[str]:
    """The name ``text`` is with one letter changed, dropped or added, or two neighbouring letters swapped: difflib's
    ratio misses these in a short key (``fpx`` or ``fsp`` against ``fps`` is 0.67). Names under 3 letters match
    too much to be told."""
    def edits(name: str) -> set[str]:
        cut = [(name[:i], name[i:]) for i in range(len(name) + 1)]
        dropped = {a + b[1:] for a, b in cut if b}
        swapped = {a + b[1] + b[0] + b[2:] for a, b in cut if len(b) > 1}
        changed = {a + c + b[1:] for a, b in cut if b for c in _LETTERS}
        return dropped | swapped | changed | {a + c + b for a, b in cut for c in _LETTERS}
    return [name for name in names if len(name) >= 3 and text in edits(name)][:1]


_LETTERS = "abcdefghijklmnopqrstuvwxyz0123456789_"


def key_shown(key: Any) -> str:
    """A config key as an error line shows it: as it is when it is a short plain name, else quoted and cut short (a
    space, a look-alike letter, a line break or a terminal's escape code is then seen, not acted on)."""
    plain = isinstance(key, str) and key.isidentifier() and key.isascii() and len(key) <= _SHOWN.maxstring
    return key if plain else shown(key)


_NOT_FINITE = re.compile(r"[+-]?(inf|infinity|nan)", re.IGNORECASE)  # as Python's float() reads them


def _coerce(tp: Any, value: Any, key: str) -> Any:
    """Return value as type tp or raise ValueError naming key and the expected type."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce(arg, value, key)
            except ValueError:
                continue
    elif origin is Literal:
        if value in typing.get_args(tp):
            return value
        if isinstance(value, str) and all(isinstance(arg, str) for arg in typing.get_args(tp)):  # a word, misspelt
            near = difflib.get_close_matches(value, typing.get_args(tp), n=1, cutoff=0.75)
            raise ValueError(f"{key}={shown(value)} is not one of {_describe(tp)}"
                             + (f" (did you mean {near[0]!r}?)" if near else ""))
    elif origin is tuple:
        if isinstance(value, (list, tuple)):
            (item,) = {a for a in typing.get_args(tp) if a is not Ellipsis}
            return tuple(_coerce(item, v, f"{key}[{i}]") for i, v in enumerate(value))
    elif dataclasses.is_dataclass(tp):
        if isinstance(value, dict):
            return parse_section(tp, value, key)
    elif tp is type(None):
        if value is None:
            return None
    elif tp is float:
        if isinstance(value, str) and _NOT_FINITE.fullmatch(value):  # YAML takes only .inf and .nan as numbers
            return float(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                return float(value)
            except OverflowError:  # an integer of more than 308 digits
                raise ValueError(f"{key}={shown(value)} is out of range; allowed: a finite number") from None
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(tp, type) and isinstance(value, tp):
        return value
    raise _wrong_type(tp, value, key)


def _wrong_type(tp: Any, value: Any, key: str) -> ValueError:
    """The error for ``value``, which is not a ``tp``, at ``key``: with how to write it where YAML misread it."""
    if value is None:  # YAML reads `key:` and `--set key=` as null
        return ValueError(f"{key} has no value; expected {_describe(tp)}")
    # YAML reads a bare 0 (a camera index), `no` or `1.10` as a number or a boolean: say how to write it as text (a
    # boolean or a float read back, `False` or `1.1`, is not what was typed: then no text is suggested)
    quote = ""
    if tp is str and isinstance(value, (int, float)):
        exact = isinstance(value, int) and not isinstance(value, bool)
        quote = f' (quote it: "{value}")' if exact else " (YAML reads it as a boolean or a number: write it in quotes)"
    elif isinstance(value, list) and len(value) == 1:  # `replay.out=-`, `- x` and `[x]` are lists of one in YAML
        quote = " (YAML reads a value starting with - or [ as a list: write it in quotes)"
    elif isinstance(value, list):  # `--threads 1 stray`: a stray word after a flag's value makes a list of them
        quote = f" ({len(value)} values given where it takes one)"
    return ValueError(f"{key}={shown(value)} has the wrong type; expected {_describe(tp)}{quote}")


def parse_section(cls: type, data: dict[str, Any], prefix: str,
                  homes: Mapping[str, Collection[str]] | None = None) -> Any:
    """Build dataclass ``cls`` from a mapping: unknown keys and wrong types raise ValueError naming the key (and the
    other sections, ``homes``, that hold it)."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            raise ValueError(f"unknown config key {prefix}.{key_shown(key)}{did_you_mean(key, names, homes)}; "
                             f"allowed keys: {', '.join(names)}")
    values = {k: _coerce(hints[k], v, f"{prefix}.{k}") for k, v in data.items()}
    try:
        return cls(**values)
    except ValueError as exc:
        raise ValueError(f"{prefix}: {exc}") from None


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``stage.key=value`` overrides (value parsed as YAML, ``1e-3`` a float) to a raw config mapping."""
    if overrides and not isinstance(data, dict):
        raise ValueError("top level must be a mapping of stage sections")
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {shown(item)} is not of the form stage.key=value")
        dotted, raw = item.split("=", 1)
        keys = override_keys(item)
        node = data
        for k in keys[:-1]:
            if node.get(k) is None:  # absent, or given empty (`record:`): the override starts it
                node[k] = {}
            node = node[k]
            if not isinstance(node, dict):
                raise ValueError(f"override {dotted}: {k} is not a section")
        node[keys[-1]] = yaml_value(raw, f"override {shown(item)}")
    return data


def override_keys(item: str) -> list[str]:
    """The dotted key of a ``stage.key=value`` override, split (``["ir", "fps"]``): leading dashes and the spaces
    around each part dropped (``ir.fps =25``, as a shell splits what is typed)."""
    return [k.strip() for k in item.partition("=")[0].lstrip("-").split(".")]


# Characters YAML refuses in any text: C0 and C1 controls bar tab (a file name may hold an escape), and lone
# surrogates, which stand for an argument's bytes that are not UTF-8 (a file name's, or any non-ASCII one under
# LC_ALL=C); and the line breaks it folds into spaces (a path holding one changed in silence). A value holding them is
# read with each swapped for a private-use character of plane 16, then given back.
_REFUSED = ((0x00, 0x08), (0x0A, 0x1F), (0x7F, 0x9F), (0x2028, 0x2029), (0xDC80, 0xDCFF))
_STAND_IN = 0x100000


def _chars(shift: int) -> re.Pattern:
    return re.compile("[" + "".join(f"{re.escape(chr(a + shift))}-{re.escape(chr(b + shift))}" for a, b in _REFUSED)
                      + "]")


_REFUSED_CHARS, _STAND_INS = _chars(0), _chars(_STAND_IN)
_LINE_BREAKS = re.compile("[\n\r\x85\u2028\u2029]")
_STAND_IN_SHOWN = re.compile(r"\\U0010([0-9a-f]{4})")  # as PyYAML's errors show a stand-in


def yaml_value(text: str, where: str) -> Any:
    """One value given on the command line (``--set``, ``--fuser NAME:key=value``), read as a config's YAML is (a
    path's control characters and bytes that are not UTF-8 kept as Python gives them); ``ValueError`` (one line,
    starting with ``where``) when it is no value that reader takes."""
    if _REFUSED_CHARS.search(text):
        try:
            value = _given_back(yaml_value(_REFUSED_CHARS.sub(lambda m: chr(ord(m.group()) + _STAND_IN), text),
                                           where), {})
        except ValueError as exc:  # its reason names the stand-in of a character given: that character instead
            raise ValueError(_STAND_IN_SHOWN.sub(lambda m: ascii(chr(int(m[1], 16)))[1:-1], str(exc))) from None
        if not isinstance(value, str) and _LINE_BREAKS.search(text):  # ``[a,<newline>b]``: an item of 'b' or '\nb'?
            raise ValueError(f"{where}: a line break is kept as given in a text value alone (a path, a name); give a "
                             f"list or mapping on one line")
        return value
    try:
        return load_yaml(text)
    except ValueNotTaken as exc:
        raise ValueError(f"{where}: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"{where}: the value is not valid YAML ({yaml_reason(exc)})") from None
    except RecursionError as exc:  # nested thousands of levels
        raise ValueError(f"{where}: not a value this reader takes ({str(exc).splitlines()[0][:80]})") from None


def _given_back(value: Any, done: dict[int, Any]) -> Any:
    """``value`` with the stand-ins' characters back; a list or mapping that aliases share is done once (an alias bomb's
    billion items are a few hundred lists)."""
    if isinstance(value, str):
        return _STAND_INS.sub(lambda m: chr(ord(m.group()) - _STAND_IN), value)
    if isinstance(value, (list, dict)) and id(value) not in done:
        done[id(value)] = value  # a list holding itself (``&a [*a]``) keeps its own
        done[id(value)] = ([_given_back(v, done) for v in value] if isinstance(value, list)
                           else {_given_back(k, done): _given_back(v, done) for k, v in value.items()})
    return done.get(id(value), value)


def yaml_reason(exc: yaml.YAMLError) -> str:
    """PyYAML's problem and where (``found character '\\t' that cannot start any token, line 3, column 1``); its
    first line alone is often only the context (``while scanning for the next token``)."""
    problem, mark = getattr(exc, "problem", None), getattr(exc, "problem_mark", None)
    if not problem:
        return str(exc).splitlines()[0]
    return f"{problem}, line {mark.line + 1}, column {mark.column + 1}" if mark is not None else problem
