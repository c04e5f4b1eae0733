"""The check content passes when it is saved or a campaign is activated: whatever can never
render is refused, on its field, with a message naming the problem.

* a syntax error, or a tag or filter the sandbox leaves out (named with the reason), or
  blocks nested deeper than ``MAX_NESTING``;
* a private attribute (``profile.__class__``), or a variable other than ``profile`` and the
  names the template itself binds (``settings.SECRET_KEY``);
* a literal argument that can never render within the limits (``ljust:"50000000"``,
  ``{% lorem 20000 p %}``) or at all (``wordwrap:0``);
* content over the budget even for a profile with no data: a trial render, which costs at
  most one message's time limit.

What only a recipient's data reveals (a width taken from the profile, a loop over a long
list) fails that recipient at render, with the same messages.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from django.core.exceptions import ValidationError
from django.template import Template, TemplateSyntaxError
from django.template.base import FilterExpression, Node, Variable
from django.template.defaulttags import (
    FilterNode,
    ForNode,
    LoremNode,
    RegroupNode,
    WidthRatioNode,
)

from .budget import (
    Budget,
    RenderBudgetExceeded,
    RenderLimits,
    children,
    instrument,
    render_limits,
)
from .profile import profile_context
from .sandbox import (
    ArgumentRefused,
    TagRefused,
    argument_rule,
    check_lorem_count,
    check_widthratio_width,
    engine,
    lorem_count,
    refusal_of,
    render_in_full,
)

__all__ = [
    "TRIGGER_CONTEXT",
    "ContentProblem",
    "TemplateContentError",
    "compiled",
    "content_profile_keys",
    "validate_content",
]

# How deep blocks may nest ({% if %} in {% for %} in …): real content nests a few levels;
# Django renders each level a few Python calls deeper, so a few hundred would fail every
# recipient with a RecursionError (or the check itself, for the parser).
MAX_NESTING = 50

# Names that the template language resolves without the context.
_LITERAL_NAMES = frozenset({"True", "False", "None"})
# The variable an API-triggered campaign's content reads its trigger's context from
# (``{{ context.order_id }}``): what the API call gave for that recipient.
TRIGGER_CONTEXT = "context"
# Node attributes that hold where a node came from, not what it computes.
_PROVENANCE = frozenset({"token", "origin"})


class TemplateContentError(ValidationError):
    """Content that can never render: a syntax error or a construct the sandbox forbids."""


class ContentProblem(Exception):
    """Why one content field can never render."""


def _walk(nodes: Any) -> Iterator[Node]:
    for node in nodes:
        yield node
        yield from _walk(children(node))


def _line(node: Node) -> int | str:
    token = getattr(node, "token", None)
    return token.lineno if token is not None else "?"


def _expressions_in(value: Any, depth: int = 0) -> Iterator[FilterExpression | Variable]:
    """Every expression a node's attributes hold, however the tag nests them."""
    if depth > 6:
        return
    if isinstance(value, FilterExpression | Variable):
        yield value
    elif isinstance(value, Node):
        return  # child nodes are walked on their own
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _expressions_in(item, depth + 1)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _expressions_in(item, depth + 1)
    elif hasattr(value, "__dict__") and type(value).__module__.startswith("django.template"):
        # {% if %} conditions are smartif operator objects (first/second/value).
        for item in vars(value).values():
            yield from _expressions_in(item, depth + 1)


def _expressions_of(node: Node) -> Iterator[FilterExpression | Variable]:
    attributes = {key: value for key, value in vars(node).items() if key not in _PROVENANCE}
    return _expressions_in(attributes)


def _variables_of(expression: FilterExpression | Variable, *, input: bool) -> Iterator[Variable]:
    if isinstance(expression, Variable):
        yield expression
        return
    if input and isinstance(expression.var, Variable):
        yield expression.var
    for _func, args in expression.filters:
        for lookup, arg in args:
            if lookup:
                yield arg


def _bound_names(node: Node) -> set[str]:
    """Names a tag binds for its body or the rest of the template (for, with, … as x)."""
    names: set[str] = set()
    names.update(getattr(node, "loopvars", []) or [])
    extra = getattr(node, "extra_context", None)
    if isinstance(extra, Mapping):
        names.update(extra)
    for attr in ("asvar", "variable_name", "var_name", "target"):
        value = getattr(node, attr, None)
        if isinstance(value, str):
            names.add(value)
    return names


def _too_deep() -> ContentProblem:
    return ContentProblem(f"Tags and conditions are nested more than {MAX_NESTING} levels deep.")


def _check_nesting(template: Template) -> None:
    pending = [(node, 0) for node in template.nodelist]  # depth: the blocks around a node
    while pending:
        node, depth = pending.pop()
        if depth > MAX_NESTING:
            raise _too_deep()
        pending.extend((child, depth + 1) for child in children(node))


@functools.cache
def _takes_argument(func: Callable[..., Any]) -> bool:
    """Whether a filter takes an argument. Django counts one given to a filter that takes
    none but autoescape (|urlize:"x") as that flag, then fails every render."""
    names = [
        name for name in inspect.signature(inspect.unwrap(func)).parameters if name != "autoescape"
    ]
    return len(names) > 1


def _check_sequence(node: Node) -> None:
    """A loop or a regroup over a number written in the template fails every recipient."""
    for kind, verb, attr in (
        (ForNode, "loop over", "sequence"),
        (RegroupNode, "regroup", "target"),
    ):
        if isinstance(node, kind):
            expression = getattr(node, attr)
            if isinstance(expression.var, Variable) and not expression.filters:
                value = expression.var.literal
                if isinstance(value, int | float):
                    raise ContentProblem(
                        f"Line {_line(node)}: cannot {verb} the number {expression.var.var}."
                    )


def _check_structure(template: Template, trigger_context: bool) -> None:
    _check_nesting(template)
    nodes = list(_walk(template.nodelist))
    allowed = {"profile", "forloop"} | _LITERAL_NAMES
    if trigger_context:
        allowed.add(TRIGGER_CONTEXT)
    for node in nodes:
        allowed |= _bound_names(node)
    for node in nodes:
        _check_sequence(node)
        for expression in _expressions_of(node):
            if isinstance(expression, FilterExpression):
                for func, args in expression.filters:
                    reason = refusal_of(func)
                    if reason is not None:
                        raise ContentProblem(
                            f"Line {_line(node)}: the |{func._filter_name} filter is not "
                            f"allowed in message content: {reason}."
                        )
                    if args and not _takes_argument(func):
                        raise ContentProblem(
                            f"Line {_line(node)}: |{func._filter_name} takes no argument."
                        )
            # {% filter %} hands its block's output to its filters as the variable "var".
            block_input = isinstance(node, FilterNode) and expression is node.filter_expr
            for variable in _variables_of(expression, input=not block_input):
                if variable.lookups is None:  # a literal: a number or a quoted string
                    if isinstance(variable.literal, float) and not math.isfinite(variable.literal):
                        raise ContentProblem(
                            f"Line {_line(node)}: the number {variable.var} is too large."
                        )
                    continue
                root = variable.lookups[0]
                if root not in allowed:
                    raise ContentProblem(
                        f"Line {_line(node)}: unknown variable {root!r}. Message content can "
                        "only use the profile's data, e.g. {{ profile.first_name }}"
                        + (
                            ", and the trigger's context, e.g. {{ context.order_id }}."
                            if trigger_context
                            else "."
                        )
                    )


@functools.lru_cache(maxsize=256)
def compiled(source: str, html: bool, trigger_context: bool = False) -> Template:
    """The content parsed, checked and instrumented, once: a batch renders it for hundreds
    of recipients, and Django templates hold no per-render state, so one compiled template
    serves every thread. With `trigger_context` (an API-triggered campaign's content) the
    variable ``context`` is allowed beside ``profile``. Raises ``ContentProblem``."""
    try:
        template = engine(html).from_string(source)
    except TagRefused as refused:
        raise ContentProblem(str(refused)) from None
    except TemplateSyntaxError as exc:
        raise ContentProblem(f"Template syntax error: {exc}") from None
    except RecursionError:  # Django's parser recurses once per nested block or "not"
        raise _too_deep() from None
    _check_structure(template, trigger_context)
    return instrument(template)


_UNKNOWN = object()


def _literal(expression: Any) -> Any:
    """The value of an expression written in the template itself, else ``_UNKNOWN``."""
    if not isinstance(expression, FilterExpression) or expression.filters:
        return _UNKNOWN
    if isinstance(expression.var, Variable):
        return expression.var.literal if expression.var.lookups is None else _UNKNOWN
    return expression.var


def _literal_argument(lookup: bool, arg: Any) -> Any:
    if not lookup:
        return arg
    return arg.literal if arg.lookups is None else _UNKNOWN


def _check_node_arguments(node: Node, limits: RenderLimits) -> None:
    if isinstance(node, LoremNode) and (count := _literal(node.count)) is not _UNKNOWN:
        check_lorem_count(lorem_count(count), node.method, limits)
    if isinstance(node, WidthRatioNode) and (width := _literal(node.max_width)) is not _UNKNOWN:
        check_widthratio_width(width)
    for expression in _expressions_of(node):
        if not isinstance(expression, FilterExpression):
            continue
        for func, args in expression.filters:
            rule = argument_rule(func._filter_name)
            if rule is None or not args:
                continue
            value = _literal_argument(*args[0])
            if value is not _UNKNOWN:
                rule(value, limits)


def _check_arguments(template: Template, limits: RenderLimits) -> None:
    for node in _walk(template.nodelist):
        try:
            _check_node_arguments(node, limits)
        except (ArgumentRefused, RenderBudgetExceeded) as problem:
            raise ContentProblem(f"Line {_line(node)}: {problem}") from None


def _trial_render(fields: list[tuple[str, Template, bool]], limits: RenderLimits) -> None:
    """Render the fields of one message for a profile with no data, under one budget as
    delivery does; refuse the field that overruns it. Other errors depend on a recipient's
    data (a missing number given to |divisibleby), so they are not the content's."""
    Budget(limits).start()
    empty = profile_context({})
    for field, template, html in fields:
        try:
            render_in_full(template, empty, html=html)
        except RenderBudgetExceeded as exc:
            raise TemplateContentError({field: f"Even for a profile with no data, {exc}"}) from None
        except RecursionError:  # a condition of many "not"s: nothing of the profile's
            raise TemplateContentError({field: str(_too_deep())}) from None
        except Exception:
            continue


def validate_content(
    *, subject: str, body: str, html_body: str = "", trigger_context: bool = False
) -> None:
    """Refuse content that can never render safely, naming the field and the problem.
    With `trigger_context` (an API-triggered campaign) ``{{ context.<key> }}`` is allowed.

    Raises ``TemplateContentError`` (a ``ValidationError`` keyed by field name).
    """
    limits = render_limits()
    errors: dict[str, list[str]] = {}
    ready: list[tuple[str, Template, bool]] = []
    for field, source, html in (
        ("subject", subject, False),
        ("body", body, False),
        ("html_body", html_body, True),
    ):
        if not source:
            continue
        try:
            template = compiled(source, html, trigger_context)
            _check_arguments(template, limits)
        except ContentProblem as problem:
            errors[field] = [str(problem)]
        else:
            ready.append((field, template, html))
    if errors:
        raise TemplateContentError(errors)
    # The HTML body is a message of its own (render_html); subject and body are one.
    _trial_render([item for item in ready if not item[2]], limits)
    _trial_render([item for item in ready if item[2]], limits)


def content_profile_keys(source: str, *, trigger_context: bool = False) -> list[str]:
    """The profile keys the content reads, in the order first met: ``first_name`` for both
    ``{{ profile.first_name }}`` and ``{{ profile.attributes.first_name }}``, ``email`` for
    ``{{ profile.email }}``; empty for content that does not compile (``validate_content``
    says why). Names the template binds itself (``{% for x in … %}``) are not the
    profile's."""
    try:
        template = compiled(source, False, trigger_context)
    except ContentProblem:
        return []
    keys: dict[str, None] = {}
    for node in _walk(template.nodelist):
        for expression in _expressions_of(node):
            for variable in _variables_of(expression, input=True):
                lookups = variable.lookups or ()
                if len(lookups) < 2 or lookups[0] != "profile":
                    continue
                key = lookups[1]
                if key == "attributes":
                    if len(lookups) < 3:
                        continue
                    key = lookups[2]
                keys[key] = None
    return list(keys)
