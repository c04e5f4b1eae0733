"""Segment rules: validate a JSON rule tree and compile it to one database filter.

A tree is `{"all": [...]}`, `{"any": [...]}`, `{"not": node}` or a condition
`{"field": ..., "op": ..., "value": ...}` (see DESIGN.md "Segment rules"). The empty tree
`{}` and `{"all": []}` match every profile; `{"any": []}` matches none.

Semantics that hold on SQLite and PostgreSQL alike:

* Attribute comparisons are typed by the rule's value: `eq 18` matches the JSON number 18
  (and 18.0), never the string "18"; `eq "18"` matches only the string. `gt`/`gte`/`lt`/`lte`
  take a number and match only numeric attributes.
* A missing attribute (or a JSON null) matches no comparison, `ne` and `not_in` included;
  only `exists: false` and `empty: true` match it. For the profile's own text fields a
  blank value counts as missing.
* `contains` and `startswith` are case-insensitive (SQLite's LIKE cannot be anything
  else, so PostgreSQL follows it). On a list attribute `contains` means "has this element"
  (exact, case-sensitive).
* Dates held in attributes are compared as ISO-8601 text ("2024-05-01" or
  "2024-05-01T10:00:00Z"), so they must be stored in that form, in UTC.

Limits. Whatever validates is evaluated on both databases: each limit below is a size
tests/segments/test_rule_limits.py evaluates (estimate, preview, snapshot) on SQLite and on
PostgreSQL, and anything beyond it is refused at save with the path of the node crossing it.

* A tree holds at most `MAX_NODES` (250) nodes, conditions and groups together, nested at
  most `MAX_DEPTH` (32) levels. Beyond a few hundred conditions under one `all`,
  PostgreSQL's planner spends seconds (30 s at 1,000) proving the partial consent index
  against them; lists, not conditions, are the way to name many values.
* An `in`/`not_in` list holds at most `MAX_LIST_VALUES` (1,000) values, and the lists of
  a tree at most `MAX_TREE_LIST_VALUES` (10,000) together: with the conditions' own
  parameters this stays well under the 32,766 parameters SQLite allows by default.
* A string value holds at most `MAX_TEXT_LENGTH` (1,000) characters (SQLite refuses a
  LIKE pattern over 50,000 bytes), and no NUL character or lone surrogate (neither database
  stores them).
* A number is finite and within the 64-bit range of whole numbers,
  ±9,223,372,036,854,775,807, decimals included: SQLite compares integers up to 64 bits
  only, and PostgreSQL keeps a whole-valued decimal such as 1e20 as the integer it is,
  which would then read back as one beyond that range. No NaN or infinity.
* A `before`/`after` value is a real calendar date or date-time in ISO-8601 extended form
  ("2024-05-01", "2024-05-01T10:00:00Z", "2024-05-01 10:00:00+02:00"), between
  0001-01-01 and 9999-12-31 once in UTC; without an offset it is read as UTC.

How a large tree stays evaluable: an `in` list is one `IN (…)` of bound parameters per JSON
type on SQLite and one containment test against an array parameter on PostgreSQL (which
the GIN index answers), never a chain of ORs. The children of `all`/`any` are joined in
pairs, most nested first: SQLite parses a flat `a OR b OR …` as a chain as deep as it is
long and refuses one deeper than SQLITE_MAX_EXPR_DEPTH (1,000 by default), and its parser
stack (100 entries before SQLite 3.46) overflows on parentheses nested too deep.
Evaluating a stored tree validates it again, so one saved before a limit existed is
refused with the same messages instead of failing in the database.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import EmptyResultSet, FullResultSet, ValidationError
from django.db import connection
from django.db.models import BooleanField, Expression, Func, Q
from django.db.models.fields.json import compile_json_path  # type: ignore[attr-defined]
from django.utils import timezone
from django.utils.text import capfirst

from .choices import ConsentChannel, consent_field
from .models import PROFILE_CONTENT_FIELDS, profile_column

Node = Any
Value = Any

# The profile columns a rule compares as text: those a message can show.
TEXT_FIELDS = PROFILE_CONTENT_FIELDS
DATE_FIELDS = ("created_at", "updated_at")
OPERATORS = (
    "eq",
    "ne",
    "in",
    "not_in",
    "gt",
    "gte",
    "lt",
    "lte",
    "contains",
    "startswith",
    "exists",
    "empty",
    "before",
    "after",
    "within_days",
)
TEXT_OPERATORS = ("eq", "ne", "in", "not_in", "contains", "startswith", "exists", "empty")
DATE_OPERATORS = ("before", "after", "within_days")
CONSENT_OPERATORS = ("eq", "ne")
# The limits of a tree (see the module docstring): each is evaluated at its value on both
# databases by tests/segments/test_rule_limits.py.
MAX_DEPTH = 32
MAX_NODES = 250
MAX_LIST_VALUES = 1000
MAX_TREE_LIST_VALUES = 10_000
MAX_TEXT_LENGTH = 1000
MAX_WITHIN_DAYS = 36_500
# The numbers a rule may hold: SQLite's INTEGER range (PostgreSQL's jsonb holds any).
MIN_INTEGER, MAX_INTEGER = -(2**63), 2**63 - 1
# ISO-8601 extended form only: the basic form "20240501" would compare wrongly as text.
ISO_MOMENT = re.compile(
    r"\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?(?:Z|[+-]\d{2}:\d{2})?)?"
)
ATTRIBUTE_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")


class RuleError(ValidationError):
    """An invalid rule tree; every message starts with the path of the bad node."""


@dataclass(frozen=True)
class FieldRef:
    kind: str  # "text", "date", "consent" or "attribute"
    name: str  # model field name, or the attribute path joined by "."
    path: tuple[str, ...] = ()


# --- validation -------------------------------------------------------------------------


def _where(path: str, part: str) -> str:
    return f"{path}.{part}" if path else part


def _show(value: Value) -> str:
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _type_name(value: Value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _is_number(value: Value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_scalar(value: Value) -> bool:
    return isinstance(value, str | bool) or _is_number(value)


def _scalar_problem(value: Value) -> str | None:
    """Why the databases cannot compare this number or string, or None when they can."""
    if isinstance(value, str):
        if len(value) > MAX_TEXT_LENGTH:
            return f"holds {len(value):,} characters; a string holds at most {MAX_TEXT_LENGTH:,}"
        if "\x00" in value:
            return "holds a NUL character, which PostgreSQL cannot store"
        try:
            value.encode()
        except UnicodeEncodeError:
            return "is not valid Unicode (it holds a lone surrogate such as \\ud800)"
    if isinstance(value, float) and not math.isfinite(value):
        return "is not a finite number"
    if _is_number(value) and not MIN_INTEGER <= value <= MAX_INTEGER:
        return f"is beyond the 64-bit range of whole numbers (±{MAX_INTEGER:,})"
    return None


def parse_field(name: Value) -> FieldRef | str:
    """The field a condition names, or a message saying why it is not one."""
    if not isinstance(name, str) or not name:
        return f"must be a field name (a string), got {_show(name)}"
    if name in TEXT_FIELDS:
        return FieldRef("text", name)
    if name in DATE_FIELDS:
        return FieldRef("date", name)
    if name.startswith("consent."):
        channel = name.removeprefix("consent.")
        if channel not in ConsentChannel.values:
            return f'unknown consent channel "{channel}"; use one of ' + ", ".join(
                f"consent.{c}" for c in ConsentChannel.values
            )
        return FieldRef("consent", consent_field(channel))
    if name.startswith("attributes."):
        path = tuple(name.removeprefix("attributes.").split("."))
        for key in path:
            if not ATTRIBUTE_KEY.match(key) or "__" in key:
                return (
                    f'bad attribute key "{key}": keys start with a letter or "_" and hold '
                    'letters, digits, "_" or "-" (no "__")'
                )
        return FieldRef("attribute", ".".join(path), path)
    known = ", ".join((*TEXT_FIELDS, *DATE_FIELDS))
    return f'unknown field "{name}"; use one of {known}, attributes.<key> or consent.<channel>'


def parse_moment(value: Value) -> dt.datetime | str:
    """The UTC instant a `before`/`after` value names, or a message saying why it names
    none. A value without an offset is read as UTC."""
    if not isinstance(value, str) or not ISO_MOMENT.fullmatch(value):
        return 'needs an ISO-8601 date or date-time, e.g. "2024-05-01" or "2024-05-01T10:00:00Z"'
    try:
        if len(value) == 10:
            moment = dt.datetime.combine(dt.date.fromisoformat(value), dt.time.min)
        else:
            moment = dt.datetime.fromisoformat(value)
    except ValueError as error:
        return f"is not a calendar date or time ({error})"
    if moment.tzinfo is None:
        return moment.replace(tzinfo=dt.UTC)
    try:
        return moment.astimezone(dt.UTC)
    except OverflowError:
        return "is outside the supported range, 0001-01-01 to 9999-12-31 in UTC"


def _value_problem(field: FieldRef, op: str, value: Value) -> str | None:
    """Why `value` does not suit `op` on `field`, or None when it does."""
    if op in ("eq", "ne"):
        if field.kind == "consent":
            return None if isinstance(value, bool) else f'"{op}" on consent needs true or false'
        if field.kind == "text":
            if not isinstance(value, str):
                return f'"{op}" on {field.name} needs a string'
        elif not _is_scalar(value):
            return f'"{op}" needs a string, number or boolean'
        problem = _scalar_problem(value)
        return f"the value {problem}" if problem else None
    if op in ("in", "not_in"):
        if not isinstance(value, list) or not value:
            return f'"{op}" needs a non-empty list'
        if len(value) > MAX_LIST_VALUES:
            return f'"{op}" takes at most {MAX_LIST_VALUES:,} values, got {len(value):,}'
        allowed = (lambda v: isinstance(v, str)) if field.kind == "text" else _is_scalar
        for index, item in enumerate(value):
            if not allowed(item):
                return f"item {index} is {_type_name(item)}; " + (
                    "use strings" if field.kind == "text" else "use strings, numbers or booleans"
                )
            problem = _scalar_problem(item)
            if problem:
                return f"item {index} {problem}"
        return None
    if op in ("gt", "gte", "lt", "lte"):
        if not _is_number(value):
            return f'"{op}" needs a number'
        problem = _scalar_problem(value)
        return f"the value {problem}" if problem else None
    if op in ("contains", "startswith"):
        if not isinstance(value, str) or not value:
            return f'"{op}" needs a non-empty string'
        problem = _scalar_problem(value)
        return f"the value {problem}" if problem else None
    if op in ("exists", "empty"):
        return None if isinstance(value, bool) else f'"{op}" needs true or false'
    if op in ("before", "after"):
        moment = parse_moment(value)
        return f'"{op}" {moment}' if isinstance(moment, str) else None
    if op == "within_days":
        if (
            not isinstance(value, int)
            or isinstance(value, bool)
            or not (0 < value <= MAX_WITHIN_DAYS)
        ):
            return f'"within_days" needs a whole number of days from 1 to {MAX_WITHIN_DAYS}'
        return None
    return None


def _operators_for(field: FieldRef) -> tuple[str, ...]:
    return {
        "text": TEXT_OPERATORS,
        "date": DATE_OPERATORS,
        "consent": CONSENT_OPERATORS,
        "attribute": OPERATORS,
    }[field.kind]


@dataclass
class _Walk:
    """What the check has counted so far, and every problem found."""

    errors: list[str]
    nodes: int = 0
    list_values: int = 0
    # Set once the tree has more nodes than allowed: the rest is not read.
    stopped: bool = False


def _check(node: Node, path: str, depth: int, walk: _Walk) -> None:
    here = path or "rules"
    if walk.stopped:
        return
    if depth > MAX_DEPTH:
        walk.errors.append(f"{here}: the tree is nested deeper than {MAX_DEPTH} levels")
        return
    if not isinstance(node, dict):
        walk.errors.append(f"{here}: a node must be an object, got {_type_name(node)}")
        return
    if path == "" and not node:
        return
    walk.nodes += 1
    if walk.nodes > MAX_NODES:
        walk.errors.append(
            f"{here}: a tree holds at most {MAX_NODES:,} nodes (conditions and groups); "
            'use "in" lists or split the segment'
        )
        walk.stopped = True
        return
    groups = [key for key in ("all", "any", "not") if key in node]
    if groups:
        if len(node) != 1:
            extra = ", ".join(sorted(k for k in node if k != groups[0]))
            walk.errors.append(
                f'{here}: a group node holds only "{groups[0]}"; remove {extra}'
                if len(groups) == 1
                else f"{here}: a node holds one of all, any, not; found {', '.join(groups)}"
            )
            return
        key = groups[0]
        child = node[key]
        if key == "not":
            _check(child, _where(path, "not"), depth + 1, walk)
            return
        if not isinstance(child, list):
            walk.errors.append(f'{_where(path, key)}: "{key}" needs a list of nodes')
            return
        for index, item in enumerate(child):
            _check(item, f"{_where(path, key)}[{index}]", depth + 1, walk)
        return
    _check_condition(node, path, walk)


def _check_condition(node: dict[str, Any], path: str, walk: _Walk) -> None:
    here = path or "rules"
    missing = [key for key in ("field", "op") if key not in node]
    if missing:
        walk.errors.append(
            f"{here}: a node is all/any/not or a condition {{field, op, value}}; "
            f"missing {', '.join(missing)}"
        )
        return
    unknown = sorted(set(node) - {"field", "op", "value"})
    if unknown:
        walk.errors.append(f"{here}: unknown key(s) {', '.join(unknown)} in a condition")
        return
    field = parse_field(node["field"])
    if isinstance(field, str):
        walk.errors.append(f"{_where(path, 'field')}: {field}")
        return
    op = node["op"]
    if op not in OPERATORS:
        walk.errors.append(f"{_where(path, 'op')}: unknown operator {_show(op)}")
        return
    if op not in _operators_for(field):
        walk.errors.append(
            f'{_where(path, "op")}: operator "{op}" does not apply to {node["field"]}; use '
            + ", ".join(_operators_for(field))
        )
        return
    if "value" not in node:
        walk.errors.append(f'{_where(path, "value")}: missing; "{op}" needs a value')
        return
    problem = _value_problem(field, op, node["value"])
    if problem:
        walk.errors.append(f"{_where(path, 'value')}: {problem}, got {_show(node['value'])}")
        return
    if op in ("in", "not_in"):
        walk.list_values += len(node["value"])
        if walk.list_values > MAX_TREE_LIST_VALUES:
            walk.errors.append(
                f"{_where(path, 'value')}: the lists of a tree hold at most "
                f"{MAX_TREE_LIST_VALUES:,} values together; this one brings them to "
                f"{walk.list_values:,}"
            )


# --- the catalogue a rule editor is driven by ----------------------------------------------

# How each operator reads in a sentence ("country is in FR, BE").
OPERATOR_LABELS: dict[str, str] = {
    "eq": "is",
    "ne": "is not",
    "in": "is one of",
    "not_in": "is none of",
    "gt": "is greater than",
    "gte": "is at least",
    "lt": "is less than",
    "lte": "is at most",
    "contains": "contains",
    "startswith": "starts with",
    "exists": "is present",
    "empty": "is empty",
    "before": "is before",
    "after": "is after",
    "within_days": "is within the last (days)",
}
FIELD_LABELS: dict[str, str] = {
    **{name: capfirst(str(profile_column(name).verbose_name)) for name in TEXT_FIELDS},
    "created_at": "Created",
    "updated_at": "Updated",
}


def _value_input(kind: str, op: str) -> str:
    """The kind of value `_value_problem` accepts for `op` on a field of `kind`: "text",
    "scalar" (a string, number or boolean), "list" (of text, or of scalars on an
    attribute), "number", "boolean", "moment" (ISO date) or "days"."""
    if op in ("eq", "ne"):
        return {"consent": "boolean", "text": "text"}.get(kind, "scalar")
    return {
        "in": "list",
        "not_in": "list",
        "gt": "number",
        "gte": "number",
        "lt": "number",
        "lte": "number",
        "contains": "text",
        "startswith": "text",
        "exists": "boolean",
        "empty": "boolean",
        "before": "moment",
        "after": "moment",
        "within_days": "days",
    }[op]


def rule_catalogue(*, attribute_keys: Sequence[str] = ()) -> dict[str, Any]:
    """What a rule tree may hold, as data for an editor: the fields (the profile's own,
    each consent channel, `attributes.<key>` for each of `attribute_keys`), the operators
    each kind of field takes with the value each needs, the groups and the limits. Read
    from the same tables `validate_rules` checks against, so an editor never offers what
    the server refuses."""
    fields = [
        {"name": name, "label": FIELD_LABELS[name], "kind": parse_field_kind(name)}
        for name in (*TEXT_FIELDS, *DATE_FIELDS)
    ]
    fields += [
        {"name": f"consent.{channel}", "label": f"Consent: {label}", "kind": "consent"}
        for channel, label in ConsentChannel.choices
    ]
    fields += [
        {"name": f"attributes.{key}", "label": f"Attribute: {key}", "kind": "attribute"}
        for key in attribute_keys
        if isinstance(parse_field(f"attributes.{key}"), FieldRef)
    ]
    kinds = ("text", "date", "consent", "attribute")
    return {
        "fields": fields,
        "attribute_prefix": "attributes.",
        "attribute_key_pattern": ATTRIBUTE_KEY.pattern,
        "operators": {
            kind: [
                {"op": op, "label": OPERATOR_LABELS[op], "value": _value_input(kind, op)}
                for op in _operators_for(FieldRef(kind, ""))
            ]
            for kind in kinds
        },
        "groups": {"all": "All of", "any": "Any of", "not": "Not"},
        "limits": {
            "max_depth": MAX_DEPTH,
            "max_nodes": MAX_NODES,
            "max_list_values": MAX_LIST_VALUES,
            "max_text_length": MAX_TEXT_LENGTH,
            "max_within_days": MAX_WITHIN_DAYS,
        },
    }


def parse_field_kind(name: str) -> str:
    """The kind of a field name the catalogue lists ("text", "date", "consent",
    "attribute")."""
    field = parse_field(name)
    assert isinstance(field, FieldRef), field
    return field.kind


def rule_errors(tree: Node) -> list[str]:
    """Every problem of the tree, each prefixed with the path of its node."""
    walk = _Walk(errors=[])
    _check(tree, "", 0, walk)
    return walk.errors


def rule_conditions(tree: Node) -> Iterator[tuple[str, FieldRef]]:
    """Every condition of a valid tree with the field it names, as ``(path, field)``:
    ``("all[1].any[0]", FieldRef("attribute", "age", ("age",)))``."""

    def walk(node: Node, path: str) -> Iterator[tuple[str, FieldRef]]:
        if not isinstance(node, dict) or not node:
            return
        for key in ("all", "any"):
            if isinstance(node.get(key), list):
                for index, item in enumerate(node[key]):
                    yield from walk(item, f"{_where(path, key)}[{index}]")
                return
        if "not" in node:
            yield from walk(node["not"], _where(path, "not"))
            return
        field = parse_field(node.get("field"))
        if isinstance(field, FieldRef):
            yield path or "rules", field

    return walk(tree, "")


def validate_rules(tree: Node) -> None:
    """Raise `RuleError` listing every bad node of the tree."""
    errors = rule_errors(tree)
    if errors:
        raise RuleError(errors)


# --- compilation ------------------------------------------------------------------------


def _sql_text(text: str) -> str:
    """A constant as an SQL string literal: attribute keys and JSON type names only, which
    validation limits to letters, digits, "_" and "-" (quotes are doubled all the same)."""
    return "'" + text.replace("'", "''") + "'"


class JsonTypeIs(Func):
    """Whether the JSON type at an attribute path is one of `types`: number, string,
    boolean, object, array, null, or "missing" — the same names on both databases, and
    never SQL NULL (so negations stay two-valued). SQLite and PostgreSQL only.

    The path and the type names are written into the SQL, not bound: a condition uses
    several of these, and SQLite allows 32,766 parameters a statement by default."""

    conditional = True

    def __init__(self, path: tuple[str, ...], types: tuple[str, ...]) -> None:
        super().__init__("attributes", output_field=BooleanField())
        self.path = path
        self.types = types

    def _among(self, type_sql: str) -> str:
        return f"{type_sql} IN ({', '.join(_sql_text(name) for name in self.types)})"

    def as_postgresql(self, compiler: Any, connection: Any, **extra: Any) -> Any:
        column, params = compiler.compile(self.source_expressions[0])
        if len(self.path) == 1:
            # `->` with one key is the operator the other conditions on the key use too,
            # and cheaper per row than a `#>` path.
            value = f"{column} -> {_sql_text(self.path[0])}"
        else:
            value = f"{column} #> {_sql_text('{' + ','.join(self.path) + '}')}"
        return self._among(f"COALESCE(jsonb_typeof({value}), 'missing')"), params

    def as_sqlite(self, compiler: Any, connection: Any, **extra: Any) -> Any:
        column, params = compiler.compile(self.source_expressions[0])
        json_path = _sql_text(compile_json_path(list(self.path)))
        type_sql = (
            f"COALESCE(CASE JSON_TYPE({column}, {json_path}) WHEN 'integer' THEN 'number' "
            "WHEN 'real' THEN 'number' WHEN 'true' THEN 'boolean' WHEN 'false' THEN 'boolean' "
            f"WHEN 'text' THEN 'string' ELSE JSON_TYPE({column}, {json_path}) END, 'missing')"
        )
        return self._among(type_sql), (*params, *params)


class JsonArrayHas(Func):
    """Whether the list at an attribute path has `value` as an element."""

    conditional = True

    def __init__(self, path: tuple[str, ...], value: str) -> None:
        super().__init__("attributes", output_field=BooleanField())
        self.path = path
        self.value = value

    def as_sqlite(self, compiler: Any, connection: Any, **extra: Any) -> Any:
        column, params = compiler.compile(self.source_expressions[0])
        sql = (
            f"EXISTS (SELECT 1 FROM JSON_EACH({column}, %s) AS element "
            "WHERE element.type = 'text' AND element.value = %s)"
        )
        return sql, (*params, compile_json_path(list(self.path)), self.value)

    def as_postgresql(self, compiler: Any, connection: Any, **extra: Any) -> Any:
        column, params = compiler.compile(self.source_expressions[0])
        return f"{column} @> %s::jsonb", (*params, json.dumps(_nest(self.path, [self.value])))


class JsonValueIn(Func):
    """Whether the value at an attribute path is one of `values`, as one test whatever the
    list's length. PostgreSQL: containment of any of the values (typed, as `eq` is, and
    answered by the GIN index). SQLite: one `IN (…)` of bound parameters, untyped
    (JSON_EXTRACT gives 1 for true), so the caller passes values of one JSON type and
    checks that type."""

    conditional = True

    def __init__(self, path: tuple[str, ...], values: list[Value]) -> None:
        super().__init__("attributes", output_field=BooleanField())
        self.path = path
        self.values = values

    def as_sqlite(self, compiler: Any, connection: Any, **extra: Any) -> Any:
        column, params = compiler.compile(self.source_expressions[0])
        marks = ", ".join(["%s"] * len(self.values))
        sql = f"JSON_EXTRACT({column}, %s) IN ({marks})"
        return sql, (*params, compile_json_path(list(self.path)), *self.values)

    def as_postgresql(self, compiler: Any, connection: Any, **extra: Any) -> Any:
        column, params = compiler.compile(self.source_expressions[0])
        documents = [json.dumps(_nest(self.path, value)) for value in self.values]
        return f"{column} @> ANY(%s::jsonb[])", (*params, documents)


class ConditionGroup(Expression):
    """All (AND) or any (OR) of many conditions, joined in pairs: `a OR b OR (c OR d)`.

    SQLite parses a flat `a OR b OR c …` as a chain as deep as it is long and refuses one
    deeper than SQLITE_MAX_EXPR_DEPTH (1,000 by default); in pairs the depth is log2(n).
    Nested `Q` objects would not do: Django flattens those of one connector into one chain.
    Parentheses are written only where the meaning needs them, since each level costs
    SQLite's parser stack (100 entries in SQLite before 3.46).
    """

    conditional = True

    def __init__(self, parts: list[Any], connector: str) -> None:
        super().__init__(output_field=BooleanField())
        self.parts = parts
        self.connector = connector
        self.resolved = False

    def get_source_expressions(self) -> list[Any]:
        return list(self.parts)

    def set_source_expressions(self, exprs: Sequence[Any]) -> None:
        self.parts = list(exprs)

    def resolve_expression(
        self,
        query: Any = None,
        allow_joins: bool = True,
        reuse: Any = None,
        summarize: bool = False,
        for_save: bool = False,
    ) -> ConditionGroup:
        group = self.copy()
        if not self.resolved:
            # Once only: the lookup holding the group resolves it again when compiled, and
            # a resolved WHERE node is always written in parentheses.
            group.parts = [
                part.resolve_expression(query, allow_joins, reuse, summarize, for_save)
                for part in self.parts
            ]
            group.resolved = True
        return group

    def as_sql(self, compiler: Any, connection: Any) -> tuple[str, list[Any]]:
        # A part that matches nothing ends an AND, and one that matches everything ends an
        # OR (Django raises EmptyResultSet / FullResultSet, or gives "" for everything); the
        # other kind changes nothing and is left out, as Django's own WHERE does.
        neutral = FullResultSet if self.connector == Q.AND else EmptyResultSet
        compiled: list[tuple[str, list[Any]]] = []
        for part in self.parts:
            try:
                sql, params = compiler.compile(part)
            except neutral:
                continue
            if not sql:
                if self.connector == Q.OR:
                    raise FullResultSet from None
                continue
            compiled.append((sql, list(params)))
        if not compiled:
            raise neutral
        sql, params = self._pair(compiled)
        # AND binds tighter than OR, and the group is used only in a WHERE (an AND of its
        # conditions), in another group or after NOT (which Django writes "NOT (…)"): only
        # an OR group needs its own parentheses.
        return (f"({sql})" if self.connector == Q.OR else sql), params

    def _pair(self, compiled: list[tuple[str, list[Any]]]) -> tuple[str, list[Any]]:
        # SQLite groups a chain from the left by itself (`a OR b OR (c OR d)` is
        # `(a OR b) OR (c OR d)`): only a right half of several parts needs parentheses.
        if len(compiled) == 1:
            return compiled[0]
        middle = (len(compiled) + 1) // 2
        left, left_params = self._pair(compiled[:middle])
        right, right_params = self._pair(compiled[middle:])
        if len(compiled) - middle > 1:
            right = f"({right})"
        return f"{left} {self.connector} {right}", [*left_params, *right_params]


def _nest(path: tuple[str, ...], value: Value) -> Any:
    for key in reversed(path):
        value = {key: value}
    return value


def _json_type(value: Value) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, str):
        return "string"
    return "number"


def _lookup(path: tuple[str, ...], lookup: str) -> str:
    # An explicit final lookup keeps keys such as "contains" from reading as lookups.
    return "__".join(("attributes", *path, lookup))


def _is_type(path: tuple[str, ...], *types: str) -> Q:
    return Q(JsonTypeIs(path, types))


def _present(path: tuple[str, ...]) -> Q:
    return _is_type(path, "number", "string", "boolean", "object", "array")


def _attribute_eq(path: tuple[str, ...], value: Value, vendor: str) -> Q:
    if vendor == "postgresql":
        # Containment is what the GIN (jsonb_path_ops) index answers, and it is already
        # typed: "18" does not contain 18, nor [x] contain x below the top level.
        return Q(attributes__contains=_nest(path, value))
    # SQLite's JSON_EXTRACT gives 1 for true and 30 for 30.0 alike: the type decides.
    return _is_type(path, _json_type(value)) & Q(**{_lookup(path, "exact"): value})


def _attribute_in(path: tuple[str, ...], values: list[Value], vendor: str) -> Q:
    if vendor == "postgresql":
        return Q(JsonValueIn(path, values))
    # One IN per JSON type present, each behind its type check, as `eq` does.
    by_type: dict[str, list[Value]] = {}
    for value in values:
        by_type.setdefault(_json_type(value), []).append(value)
    return _group(
        [_is_type(path, kind) & Q(JsonValueIn(path, items)) for kind, items in by_type.items()],
        Q.OR,
    )


def _attribute_condition(path: tuple[str, ...], op: str, value: Value, vendor: str) -> Q:
    if op == "eq":
        return _attribute_eq(path, value, vendor)
    if op == "ne":
        return _present(path) & ~_attribute_eq(path, value, vendor)
    if op == "in":
        return _attribute_in(path, value, vendor)
    if op == "not_in":
        return _present(path) & ~_attribute_in(path, value, vendor)
    if op in ("gt", "gte", "lt", "lte"):
        return _is_type(path, "number") & Q(**{_lookup(path, op): value})
    if op == "contains":
        as_text = _is_type(path, "string") & Q(**{_lookup(path, "icontains"): value})
        return as_text | (_is_type(path, "array") & Q(JsonArrayHas(path, value)))
    if op == "startswith":
        return _is_type(path, "string") & Q(**{_lookup(path, "istartswith"): value})
    if op in ("exists", "empty"):
        blank = (
            _is_type(path, "missing", "null")
            | (_is_type(path, "string") & Q(**{_lookup(path, "exact"): ""}))
            | (_is_type(path, "array") & Q(**{_lookup(path, "exact"): []}))
            | (_is_type(path, "object") & Q(**{_lookup(path, "exact"): {}}))
        )
        if op == "exists":
            present = _present(path)
            return present if value else ~present
        return blank if value else ~blank
    if op in ("before", "after", "within_days"):
        text = _is_type(path, "string")
        if op == "within_days":
            today = timezone.now().date()
            since = (today - dt.timedelta(days=value)).isoformat()
            # Text comparison: anything dated before tomorrow, times later today included.
            until = (today + dt.timedelta(days=1)).isoformat()
            return text & Q(**{_lookup(path, "gte"): since}) & Q(**{_lookup(path, "lt"): until})
        return text & Q(**{_lookup(path, "lt" if op == "before" else "gt"): value})
    raise AssertionError(op)


def _text_condition(name: str, op: str, value: Value) -> Q:
    blank = Q(**{name: ""})
    if op == "eq":
        return Q(**{name: value}) if value else blank
    if op == "ne":
        return ~blank & ~Q(**{name: value})
    if op == "in":
        return Q(**{f"{name}__in": value})
    if op == "not_in":
        return ~blank & ~Q(**{f"{name}__in": value})
    if op == "contains":
        return Q(**{f"{name}__icontains": value})
    if op == "startswith":
        return Q(**{f"{name}__istartswith": value})
    if op == "exists":
        return ~blank if value else blank
    if op == "empty":
        return blank if value else ~blank
    raise AssertionError(op)


def _date_condition(name: str, op: str, value: Value) -> Q:
    if op in ("before", "after"):
        moment = parse_moment(value)
        assert isinstance(moment, dt.datetime)
        return Q(**{f"{name}__{'lt' if op == 'before' else 'gt'}": moment})
    if op == "within_days":
        return Q(**{f"{name}__gte": timezone.now() - dt.timedelta(days=value)})
    raise AssertionError(op)


def _consent_condition(name: str, op: str, value: bool) -> Q:
    return Q(**{name: value if op == "eq" else not value})


# Explicit constants: an empty Q() would vanish from `x | Q()` instead of matching all.
NOTHING = Q(pk__in=[])
EVERYTHING = ~Q(pk__in=[])


def _group(parts: list[Q], connector: str) -> Q:
    """All (`Q.AND`) or any (`Q.OR`) of the parts; none is every profile for AND, none
    for OR."""
    if not parts:
        return EVERYTHING if connector == Q.AND else NOTHING
    if len(parts) == 1:
        return parts[0]
    return Q(ConditionGroup(parts, connector))


def _height(node: Node) -> int:
    """How many groups and NOTs nest below the node (0 for a condition)."""
    if not isinstance(node, dict) or not node:
        return 0
    if "not" in node:
        return 1 + _height(node["not"])
    children = node.get("all", node.get("any"))
    if children is None:
        return 0
    return 1 + max((_height(child) for child in children), default=0)


def _compile(node: Node, vendor: str) -> Q:
    if not node:
        return EVERYTHING
    for key, connector in (("all", Q.AND), ("any", Q.OR)):
        if key in node:
            # The most nested children first: SQLite's parser then reads them with no
            # operand of this group pending on its stack, so the stack grows by a level's
            # parentheses only, whatever the group's width.
            children = sorted(node[key], key=_height, reverse=True)
            return _group([_compile(child, vendor) for child in children], connector)
    if "not" in node:
        return ~_compile(node["not"], vendor)
    field = parse_field(node["field"])
    assert isinstance(field, FieldRef)
    op, value = node["op"], node["value"]
    builders: dict[str, Callable[[], Q]] = {
        "text": lambda: _text_condition(field.name, op, value),
        "date": lambda: _date_condition(field.name, op, value),
        "consent": lambda: _consent_condition(field.name, op, value),
        "attribute": lambda: _attribute_condition(field.path, op, value, vendor),
    }
    return builders[field.kind]()


def compile_rules(tree: Node, *, vendor: str | None = None) -> Q:
    """One `Q` over `Profile` for the whole tree (validated first: raises `RuleError`)."""
    validate_rules(tree)
    return _compile(tree, vendor or connection.vendor)
