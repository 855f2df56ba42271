"""The one strict JSON reader: every document from outside (a source's body, a payload, a result)
goes through ``loads``, and values that arrive already parsed go through ``check``.

Refused, each as a ``StrictJsonError`` (a ``ValueError``) with ``.kind``, ``.reason`` and ``.path``:

    size       more than ``max_bytes`` (default ``DEFAULT_MAX_BYTES``, 64 MiB)
    encoding   bytes that are not UTF-8; a lone surrogate, raw or as a ``\\ud800`` escape (SQLite
               cannot store one)
    syntax     not JSON at all (``.path`` is "line L column C")
    depth      containers nested deeper than ``max_depth`` (default 64; real payloads use 3 or 4)
    constant   NaN, Infinity, -Infinity (Python's json accepts them; nothing else does)
    number     an integer outside signed 64 bits, a float that is not finite (``1e400``)
    type       (``check`` only) a Python value that JSON cannot hold

Cost: the checks are C-speed scans next to the parse (bytes.translate, bytes.count, substring
search) and a parse_float hook, so a normal document parses at close to ``json.loads`` speed.
Measured on 1 MB documents (best of 15, Python 3.11): bulk user records 1.3-1.4x json.loads
(12.4 ms vs 9.0 ms), a list of ints 1.27x; records full of 19-digit ids 1.7x (those need the int
hook); strings full of brackets and escaped quotes 2x. The int hook, which costs a Python call per
integer, is used only when a scan finds a digit run long enough to leave int64; the path-finding
second parse runs only for a document that is refused.

Depth is found without recursion: strings are cut out, only brackets are kept, and innermost pairs
are removed one level per pass (at most ``max_depth`` passes over a string that shrinks fast). A
100,000-deep document is refused in under 5 ms; ``json`` is never asked to recurse into it. The
worst case, a document of nothing but brackets nested 64 deep throughout, costs about as much as
its parse (1.4 s vs 1.55 s for 8 MB).

Stdlib only, and nothing heavy at import: the hot agent commands import this.
"""

from __future__ import annotations

import json
from math import isfinite
from typing import Any, Iterable

DEFAULT_MAX_BYTES = 64 * 1024 * 1024  # the same ceiling as command-line JSON input (workctl.jsoninput)
DEFAULT_MAX_DEPTH = 64
INT_MIN, INT_MAX = -(2**63), 2**63 - 1
# "-9223372036854775808": an integer with more characters than this is out of range without parsing it.
_MAX_INT_CHARS = 20
_MAX_PATH_KEY = 40  # a key longer than this is cut in error paths (keys are the document's content)

# Two byte tables for the scans. Brackets: both kinds as one, quotes kept, everything else deleted.
# Digits: each digit a "0", everything else a space, so a long number is a long run of "0".
_BRACKETS = bytearray(range(256))
_BRACKETS[ord("{")], _BRACKETS[ord("}")] = ord("["), ord("]")
_BRACKET_TABLE = bytes(_BRACKETS)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b'[]{}"')
_DIGIT_TABLE = bytes(ord("0") if chr(b).isdigit() and b < 128 else ord(" ") for b in range(256))
# 19 digits can exceed int64 (20 with a sign, and the sign is not a digit); fewer cannot.
_LONG_DIGITS = b"0" * 19
del _BRACKETS


class StrictJsonError(ValueError):
    """``what`` could not be accepted: ``reason`` (what was wrong) at ``path`` (where)."""

    def __init__(self, kind: str, reason: str, path: str = "$", *, what: str = "JSON"):
        self.kind, self.reason, self.path, self.what = kind, reason, path, what
        super().__init__(f"{what}: {reason} at {path}")


class _Bad:
    """Stands in for a refused number or constant during the second (path-finding) parse."""

    __slots__ = ("kind", "reason")

    def __init__(self, kind: str, reason: str):
        self.kind, self.reason = kind, reason


def _int(text: str) -> int:
    if len(text) > _MAX_INT_CHARS:
        raise _Refused("number", "integer out of range (more than 64 bits)")
    value = int(text)
    if not INT_MIN <= value <= INT_MAX:
        raise _Refused("number", "integer out of range (more than 64 bits)")
    return value


def _float(text: str) -> float:
    value = float(text)
    if not isfinite(value):
        raise _Refused("number", "number too large (not a finite float)")
    return value


def _constant(text: str) -> Any:
    raise _Refused("constant", f"{text} is not allowed")


class _Refused(Exception):
    """Raised by the parse hooks; turned into a StrictJsonError with a path by ``loads``."""

    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind, self.reason = kind, reason


def _marking(hook: Any) -> Any:
    def mark(text: str) -> Any:
        try:
            return hook(text)
        except _Refused as refused:
            return _Bad(refused.kind, refused.reason)
    return mark


def loads(data: bytes | bytearray | str, *, max_bytes: int = DEFAULT_MAX_BYTES, max_depth: int = DEFAULT_MAX_DEPTH,
          what: str = "JSON") -> Any:
    """Parse ``data`` strictly (see the module's docstring); StrictJsonError on anything refused."""
    if len(data) > max_bytes:
        raise StrictJsonError("size", f"is larger than {_size(max_bytes)}", "$", what=what)
    raw: bytes | bytearray
    if isinstance(data, str):
        text = data
        try:
            raw = data.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise StrictJsonError("encoding", "holds a lone surrogate (not valid Unicode)",
                                  f"character {exc.start}", what=what) from None
        if len(raw) > max_bytes:
            raise StrictJsonError("size", f"is larger than {_size(max_bytes)}", "$", what=what)
    else:
        raw = data
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise StrictJsonError("encoding", "is not valid UTF-8", f"byte {exc.start}", what=what) from None
    escapes = b"\\" in raw
    if escapes:
        raw = _without_escapes(raw)
    _check_depth(raw, max_depth, text, what)
    # Floats always go through the hook (a float that overflows is only found by parsing it, and the
    # hook costs a call per float); ints only when a digit run is long enough to leave int64.
    long_ints = _LONG_DIGITS in raw.translate(_DIGIT_TABLE)
    try:
        if long_ints:
            value = json.loads(text, parse_int=_int, parse_float=_float, parse_constant=_constant)
        else:
            value = json.loads(text, parse_float=_float, parse_constant=_constant)
    except json.JSONDecodeError as exc:
        raise StrictJsonError("syntax", f"is not valid JSON ({exc.msg})", f"line {exc.lineno} column {exc.colno}",
                              what=what) from None
    except _Refused:
        # Rare: parse again with hooks that leave markers, and walk to the first one for its path.
        marked = json.loads(text, parse_int=_marking(_int), parse_float=_marking(_float),
                            parse_constant=_marking(_constant))
        _walk(marked, max_depth, what, strings=False)
        raise AssertionError("a refused number left no marker") from None
    if escapes and _may_hold_surrogates(raw, data):
        _walk(value, max_depth, what, strings=True)
    return value


def check(value: Any, *, max_depth: int = DEFAULT_MAX_DEPTH, what: str = "JSON") -> None:
    """Refuse an already-parsed value that ``loads`` would not have produced: a type JSON cannot hold
    (non-str keys included), an int outside signed 64 bits, a float that is not finite, nesting deeper
    than ``max_depth``, a string with lone surrogates. Iterative: any depth costs no recursion."""
    _walk(value, max_depth, what, strings=True)


# -- the scans ------------------------------------------------------------------------------------------
def _without_escapes(raw: bytes | bytearray) -> bytes | bytearray:
    """``raw`` without the two escapes that could hide a string's end from the bracket scan: ``\\\\``
    (removed first, pairing a run of backslashes from its left as JSON does) and ``\\"``. Other
    escapes (``\\n``, ``\\u00e9``) hold no quote or bracket and stay."""
    return raw.replace(b"\\\\", b"").replace(b'\\"', b"")


def _may_hold_surrogates(raw: bytes | bytearray, data: bytes | bytearray | str) -> bool:
    # Escapes are gone from ``raw``; look for a \uD800-\uDFFF escape in the original.
    import re

    source = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    return re.search(rb"\\u[dD][89a-fA-F]", source) is not None


def _check_depth(raw: bytes | bytearray, max_depth: int, text: str, what: str) -> None:
    brackets = raw.translate(_BRACKET_TABLE, _NOT_BRACKETS)
    if len(brackets) <= max_depth:  # fewer brackets than the limit cannot nest deeper than it
        return
    # Quotes: adjacent pairs are an empty string or the seam between two strings. When every quote is
    # in such a pair, no string holds a bracket and the quotes can simply go (cheaper than replacing).
    quotes = brackets.count(b'"')
    if quotes == 2 * brackets.count(b'""'):
        brackets = brackets.translate(None, b'"')
    elif quotes:
        brackets = b"".join(brackets.replace(b'""', b"").split(b'"')[::2])
    run = b"[" * (max_depth + 1)  # a run of openers: the usual shape of a nesting attack, after a pass or two
    for _ in range(max_depth):
        if not brackets:
            return
        if run in brackets:
            raise StrictJsonError("depth", f"is nested deeper than {max_depth} levels",
                                  _deep_position(text, max_depth), what=what)
        shorter = brackets.replace(b"[]", b"")
        if len(shorter) == len(brackets):
            break
        brackets = shorter
    if not brackets:
        return
    # Whatever is left is either nested deeper than max_depth (an innermost pair survived) or
    # unbalanced (a truncated document: the parse will say so, unless it opens too many levels).
    if b"[]" in brackets or brackets.count(b"[") > max_depth:
        raise StrictJsonError("depth", f"is nested deeper than {max_depth} levels", _deep_position(text, max_depth),
                              what=what)


def _deep_position(text: str, max_depth: int) -> str:
    """Where the nesting first goes past ``max_depth`` (only for a refused document)."""
    import re

    depth = 0
    for match in re.finditer(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', text, re.S):
        token = match.group()
        if token in "[{":
            depth += 1
            if depth > max_depth:
                line = text.count("\n", 0, match.start()) + 1
                column = match.start() - (text.rfind("\n", 0, match.start()) + 1) + 1
                return f"line {line} column {column}"
        elif token in "]}":
            depth -= 1
    return "$"


# -- the walk -------------------------------------------------------------------------------------------
_SCALARS = (str, int, float, bool, type(None))
_CONTAINERS = (dict, list, tuple)


def _walk(value: Any, max_depth: int, what: str, *, strings: bool) -> None:
    # Containers go on a stack with their depth and path; the path is a linked (parent, key) pair,
    # joined into "$.a[3].b" only for an error. Plain children (the bulk of any document) are checked
    # in the loop without a push.
    stack: list[tuple[Any, int, Any]] = [(value, 0, None)]
    while stack:
        item, depth, path = stack.pop()
        if not isinstance(item, _CONTAINERS):
            _scalar(item, path, what, strings)
            continue
        if depth >= max_depth:
            raise StrictJsonError("depth", f"is nested deeper than {max_depth} levels", _path(path), what=what)
        if isinstance(item, dict):
            for key in item:
                if type(key) is not str or (strings and not key.isascii()):
                    _key(key, path, what, strings)
            pairs: Iterable[tuple[Any, Any]] = item.items()
        else:
            pairs = enumerate(item)
        nested: list[tuple[Any, int, Any]] = []
        for key, child in pairs:
            kind = type(child)
            if kind is str:
                if strings and not child.isascii():
                    _check_string(child, (path, key), what)
            elif kind is int:
                if not INT_MIN <= child <= INT_MAX:
                    raise StrictJsonError("number", "integer out of range (more than 64 bits)", _path((path, key)),
                                          what=what)
            elif kind is bool or child is None:
                pass
            elif isinstance(child, _CONTAINERS):
                nested.append((child, depth + 1, (path, key)))
            else:
                _scalar(child, (path, key), what, strings)
        stack.extend(reversed(nested))  # popped in document order, so an error names the first offender


def _key(key: Any, path: Any, what: str, strings: bool) -> None:
    if type(key) is not str:
        raise StrictJsonError("type", f"has a {type(key).__name__} key (JSON keys are strings)", _path(path),
                              what=what)
    if strings and not key.isascii():
        _check_string(key, path, what)


def _scalar(item: Any, path: Any, what: str, strings: bool) -> None:
    """A value that is not a container: a marker left by the second parse, or a scalar to check."""
    if type(item) is _Bad:
        raise StrictJsonError(item.kind, item.reason, _path(path), what=what)
    if not isinstance(item, _SCALARS):
        raise StrictJsonError("type", f"holds a {type(item).__name__}, which JSON cannot represent", _path(path),
                              what=what)
    if isinstance(item, bool) or item is None:
        return
    if isinstance(item, int) and not INT_MIN <= item <= INT_MAX:
        raise StrictJsonError("number", "integer out of range (more than 64 bits)", _path(path), what=what)
    if isinstance(item, float) and not isfinite(item):
        raise StrictJsonError("number", "number is not finite (NaN or infinity)", _path(path), what=what)
    if isinstance(item, str) and strings and not item.isascii():
        _check_string(item, path, what)


def _check_string(text: str, path: Any, what: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise StrictJsonError("encoding", "holds a lone surrogate (not valid Unicode)", _path(path),
                              what=what) from None


def _path(link: Any) -> str:
    parts: list[Any] = []
    while link is not None:
        link, key = link
        parts.append(key)
    # The same style as every other path workctl reports (a result's checks, jsonschema's errors):
    # ``synced_users.3.data.email``, ``$`` for the whole document; an unusual key is quoted.
    out: list[str] = []
    for key in reversed(parts):
        if isinstance(key, int) or (key.isidentifier() and len(key) <= _MAX_PATH_KEY):
            out.append(f".{key}" if out else str(key))
        else:
            shown = key if len(key) <= _MAX_PATH_KEY else key[:_MAX_PATH_KEY] + "…"
            out.append(f"[{json.dumps(shown)}]")
    return "".join(out) or "$"


def _size(limit: int) -> str:
    if limit >= 1024 * 1024 and limit % (1024 * 1024) == 0:
        return f"{limit // (1024 * 1024)} MiB"
    if limit >= 1024 and limit % 1024 == 0:
        return f"{limit // 1024} KiB"
    return f"{limit} bytes"
