"""What a profile's data may hold, checked alike at every door, and JSON text parsed
with a bound on its nesting.

* Attributes: how deep objects and lists nest, their size as compact JSON, the length of
  a key (the settings `SALVO_PROFILE_ATTRIBUTES_MAX_DEPTH`, `…_MAX_BYTES` and
  `SALVO_PROFILE_ATTRIBUTE_KEY_MAX_LENGTH`), and no value a database cannot store (the
  NUL character, a lone surrogate, NaN or infinity). A profile's attributes reach
  rendering, rules and the GIN index on every send: a 900-level object made each of its
  recipients' batches fail with `RecursionError`.
* External ids: no control character (CR, LF, tab, NUL…), line separator, lone
  surrogate (not Unicode: no database stores it), "<" or ">".
  An id goes into the `List-Unsubscribe` header of marketing email and into links, where
  such characters end a header or a URI (the delivery engine also percent-encodes it).
* JSON text: `check_json_nesting` refuses text nested deeper than `SALVO_JSON_MAX_DEPTH`
  before any parser sees it: Python's JSON parser, and whatever walks its result, would
  run out of recursion around a thousand levels. Every door that parses JSON (the API's
  parser, JSON form fields, import lines) calls it first.

`validate_attributes` and `validate_external_id` are the model fields' validators, so the
admin's forms, the API's serializers and the profile services (`full_clean`) all run them;
the import checks its rows with the same functions (`attributes_problem`,
`external_id_problem`) and, for whole CSV columns at once, the same limits and pattern.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError

# Control characters (C0, DEL, C1), the Unicode line and paragraph separators, lone
# surrogates, "<" and ">".
EXTERNAL_ID_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff<>]")
LONE_SURROGATE = re.compile("[\ud800-\udfff]")
# A key shown in a path as `.key`; any other as `["key"]`.
PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
SHOWN_KEY_CHARACTERS = 40


@dataclass(frozen=True)
class AttributeLimits:
    max_depth: int
    max_bytes: int
    max_key_length: int

    @classmethod
    def from_settings(cls) -> AttributeLimits:
        return cls(
            max_depth=settings.SALVO_PROFILE_ATTRIBUTES_MAX_DEPTH,
            max_bytes=settings.SALVO_PROFILE_ATTRIBUTES_MAX_BYTES,
            max_key_length=settings.SALVO_PROFILE_ATTRIBUTE_KEY_MAX_LENGTH,
        )


def shown(text: str) -> str:
    """Text as a message quotes it: JSON-escaped (so control characters and lone
    surrogates show as `\\u0000`, and the message itself stays valid UTF-8), cut short."""
    escaped = json.dumps(text, ensure_ascii=False)[1:-1]
    escaped = LONE_SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", escaped)
    if len(escaped) > SHOWN_KEY_CHARACTERS:
        return escaped[:SHOWN_KEY_CHARACTERS] + "…"
    return escaped


def _member_path(path: str, key: str) -> str:
    if PLAIN_KEY.fullmatch(key) and len(key) <= SHOWN_KEY_CHARACTERS:
        return f"{path}.{key}"
    return f'{path}["{shown(key)}"]'


def text_problem(text: str) -> str | None:
    """Why no database stores `text` ("cannot hold…", "holds…"), or None."""
    if "\x00" in text:
        return "cannot hold the NUL character (\\u0000)"
    surrogate = LONE_SURROGATE.search(text)
    if surrogate:
        return f"holds a lone surrogate (\\u{ord(surrogate.group()):04x}), not Unicode"
    return None


def attributes_problem(value: Any, limits: AttributeLimits) -> str | None:
    """What is wrong with attributes, as "<path>: <problem>." (the first problem found,
    in document order), or None. Walks the value without recursion, so any depth is safe
    to check."""
    if not isinstance(value, dict):
        return "attributes: must be a JSON object."
    pending: list[tuple[Any, str, int]] = [(value, "attributes", 1)]
    while pending:
        node, path, depth = pending.pop()
        if isinstance(node, dict | list) and depth > limits.max_depth:
            return f"{path}: nested deeper than {limits.max_depth} levels."
        if isinstance(node, dict):
            children = []
            for key, child in node.items():
                if not isinstance(key, str):
                    return f"{path}: the key {key!r} is not text."
                problem = text_problem(key)
                if problem:
                    return f"{path}: the key “{shown(key)}” {problem}."
                if len(key) > limits.max_key_length:
                    return (
                        f"{path}: the key “{shown(key)}” is longer than "
                        f"{limits.max_key_length} characters."
                    )
                children.append((child, _member_path(path, key), depth + 1))
            pending.extend(reversed(children))
        elif isinstance(node, list):
            pending.extend(
                (child, f"{path}[{index}]", depth + 1)
                for index, child in reversed(list(enumerate(node)))
            )
        elif isinstance(node, str):
            problem = text_problem(node)
            if problem:
                return f"{path}: text {problem}."
        elif isinstance(node, float) and not math.isfinite(node):
            return f"{path}: {node} is not a JSON number."
    size = attributes_size(value)
    if size > limits.max_bytes:
        return attributes_size_problem(size, limits)
    return None


def attributes_size(value: Any) -> int:
    """The size the limit applies to: UTF-8 bytes of the value as compact JSON."""
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())


def attributes_size_problem(size: int, limits: AttributeLimits, *, merged: bool = False) -> str:
    once_merged = " once merged into the stored ones" if merged else ""
    return f"attributes: {size:,} bytes as JSON{once_merged}; the limit is {limits.max_bytes:,}."


def validate_attributes(value: Any) -> None:
    problem = attributes_problem(value, AttributeLimits.from_settings())
    if problem:
        raise ValidationError(problem, code="attributes_limit")


def external_id_problem(value: str) -> str | None:
    unsafe = EXTERNAL_ID_UNSAFE.search(value)
    if unsafe is None:
        return None
    return (
        f"“{shown(unsafe.group())}” at position {unsafe.start() + 1}: an external id holds "
        "no control characters (line breaks, tabs…), line separators, lone surrogates, “<” "
        "or “>”, which would break the email headers and links it goes into."
    )


def validate_external_id(value: str) -> None:
    problem = external_id_problem(value)
    if problem:
        raise ValidationError(problem, code="unsafe_external_id")


# --- JSON text ----------------------------------------------------------------------------


class JsonTooDeep(ValueError):
    """JSON text nested deeper than a door accepts; it was not parsed."""


_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_BRACKET_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


def json_nesting_depth(text: str) -> int:
    """How deep the objects and lists of JSON text nest (0 for a scalar), read from its
    brackets outside strings, without parsing it."""
    brackets = _NOT_BRACKET.sub("", _JSON_STRING.sub("", text))
    return max(itertools.accumulate(map(_BRACKET_STEP.__getitem__, brackets)), default=0)


def json_max_depth() -> int:
    return int(settings.SALVO_JSON_MAX_DEPTH)


def check_json_nesting(text: str, max_depth: int | None = None) -> None:
    """Raise `JsonTooDeep` when JSON text nests deeper than `max_depth` (by default
    `SALVO_JSON_MAX_DEPTH`). Text with fewer brackets than that is passed at once."""
    limit = json_max_depth() if max_depth is None else max_depth
    if text.count("[") + text.count("{") > limit and json_nesting_depth(text) > limit:
        raise JsonTooDeep(f"nested deeper than {limit} levels")
