"""Personalised message content, rendered in a sandbox.

Subjects and bodies are Django template language run by a dedicated ``Engine`` (never the
project's): no template loaders, no tag libraries, none of the tags that reach outside the
message (``load``, ``include``, ``extends``, ``block``, ``debug``, ``url``, ``csrf_token``),
and a context holding nothing but plain data about one profile under the name ``profile``.

* ``validate_content`` runs when content is saved or a campaign is activated: a syntax error,
  a forbidden tag, a private attribute (``profile.__class__``) or any variable other than
  ``profile`` (``settings.SECRET_KEY``) is refused with a message naming it.
* ``render_content`` renders one recipient's subject and body; whatever goes wrong for that
  recipient becomes a ``RenderError``, a per-recipient failure.

The profile's data is read-only (``profile``): nothing a template calls can change it.

A missing field renders as an empty string, so ``{{ profile.first_name|default:"there" }}``
is how content says what to write when a profile lacks a value.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from django.core.exceptions import ValidationError
from django.template import (
    Context,
    Engine,
    Library,
    Template,
    TemplateSyntaxError,
    defaultfilters,
    defaulttags,
)
from django.template.base import (
    FilterExpression,
    Lexer,
    Node,
    TextNode,
    TokenType,
    Variable,
    VariableNode,
)

from .profile import PROFILE_FIELDS, profile_context, read_only

__all__ = [
    "FORBIDDEN_TAGS",
    "PROFILE_FIELDS",
    "RenderError",
    "TemplateContentError",
    "content_renderer",
    "profile_context",
    "render_content",
    "validate_content",
]

# Tags that load code or files, reverse URLs or dump the context. Everything else of the
# default library (if, for, with, firstof, now, …) stays available.
FORBIDDEN_TAGS = frozenset(
    {"load", "include", "extends", "block", "debug", "url", "csrf_token", "ssi"}
)

# Names that the template language resolves without the context.
_LITERAL_NAMES = frozenset({"True", "False", "None"})


class TemplateContentError(ValidationError):
    """Content that can never render: a syntax error or a construct the sandbox forbids."""


class RenderError(Exception):
    """Content that could not be rendered for one recipient."""


def _sandbox_library() -> Library:
    library = Library()
    library.tags = {
        name: tag for name, tag in defaulttags.register.tags.items() if name not in FORBIDDEN_TAGS
    }
    library.filters = dict(defaultfilters.register.filters)
    return library


def _make_engine(*, autoescape: bool) -> Engine:
    engine = Engine(
        # An in-memory loader with no templates: nothing on disk can be reached.
        loaders=[("django.template.loaders.locmem.Loader", {})],
        libraries={},
        autoescape=autoescape,
        string_if_invalid="",
        debug=False,
    )
    # Replace the default builtins (which include loader_tags) with the reduced library, so
    # a forbidden tag is unknown even if the lexical check below were bypassed.
    engine.template_builtins = [_sandbox_library()]
    return engine


# Plain-text channels must not turn "Tom & Jerry" into "Tom &amp; Jerry"; HTML must escape.
_TEXT_ENGINE = _make_engine(autoescape=False)
_HTML_ENGINE = _make_engine(autoescape=True)


def _engine(html: bool) -> Engine:
    return _HTML_ENGINE if html else _TEXT_ENGINE


def _refuse(field: str, message: str) -> TemplateContentError:
    return TemplateContentError({field: message})


def _check_tags(source: str, field: str) -> None:
    for token in Lexer(source).tokenize():
        if token.token_type is TokenType.BLOCK:
            name = token.contents.split(maxsplit=1)[0] if token.contents else ""
            if name in FORBIDDEN_TAGS:
                raise _refuse(
                    field,
                    f"Line {token.lineno}: the {{% {name} %}} tag is not allowed in message "
                    "content.",
                )


def _children(node: Node) -> Iterator[Node]:
    for attr in node.child_nodelists:
        yield from getattr(node, attr, None) or []
    # {% if %} keeps its branches in a list of (condition, nodelist) pairs.
    for _condition, nodelist in getattr(node, "conditions_nodelists", []):
        yield from nodelist


def _walk(nodes: Iterator[Node] | list[Node]) -> Iterator[Node]:
    for node in nodes:
        yield node
        yield from _walk(list(_children(node)))


def _variables_in(value: Any, depth: int = 0) -> Iterator[Variable]:
    """Every context Variable that a node's attributes hold, however the tag nests them."""
    if depth > 6:
        return
    if isinstance(value, Variable):
        yield value
    elif isinstance(value, FilterExpression):
        if isinstance(value.var, Variable):
            yield value.var
        for _filter, args in value.filters:
            for lookup, arg in args:
                if lookup:
                    yield arg
    elif isinstance(value, Node):
        return  # child nodes are walked on their own
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _variables_in(item, depth + 1)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _variables_in(item, depth + 1)
    elif hasattr(value, "__dict__") and type(value).__module__.startswith("django.template"):
        # {% if %} conditions are smartif operator objects (first/second/value).
        for item in vars(value).values():
            yield from _variables_in(item, depth + 1)


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


def _check_variables(template: Template, field: str) -> None:
    nodes = list(_walk(list(template.nodelist)))
    allowed = {"profile", "forloop"} | _LITERAL_NAMES
    for node in nodes:
        allowed |= _bound_names(node)
    for node in nodes:
        for variable in _variables_in(vars(node)):
            if variable.lookups is None:
                continue  # a literal: a number or a quoted string
            root = variable.lookups[0]
            if root not in allowed:
                token = getattr(node, "token", None)
                line = token.lineno if token is not None else "?"
                raise _refuse(
                    field,
                    f"Line {line}: unknown variable {root!r}. Message content can only use "
                    "the profile's data, e.g. {{ profile.first_name }}.",
                )


def _validate_one(source: str, *, field: str, html: bool) -> Template:
    _check_tags(source, field)
    try:
        template = _engine(html).from_string(source)
    except TemplateSyntaxError as exc:
        raise _refuse(field, f"Template syntax error: {exc}") from None
    _check_variables(template, field)
    return template


# A batch renders the same content for hundreds of recipients: parse and check it once.
# Django templates hold no per-render state, so one compiled template serves every thread.
_compiled = functools.lru_cache(maxsize=256)(_validate_one)


def validate_content(*, subject: str, body: str, html_body: str = "") -> None:
    """Refuse content that can never render safely, naming the field and the problem.

    Raises ``TemplateContentError`` (a ``ValidationError`` keyed by field name).
    """
    errors: dict[str, list[str]] = {}
    for field, source, html in (
        ("subject", subject, False),
        ("body", body, False),
        ("html_body", html_body, True),
    ):
        if not source:
            continue
        try:
            _validate_one(source, field=field, html=html)
        except TemplateContentError as exc:
            errors.update(exc.message_dict)
    if errors:
        raise TemplateContentError(errors)


def _text_and_variables(template: Template) -> list[str | VariableNode] | None:
    """The template's nodes when it is only text and ``{{ variables }}``, else None."""
    parts: list[str | VariableNode] = []
    for node in template.nodelist:
        if isinstance(node, TextNode):
            parts.append(node.s)
        elif isinstance(node, VariableNode):
            parts.append(node)
        else:
            return None
    return parts


def _renderer(source: str, *, field: str, html: bool) -> Callable[[Mapping[str, Any]], str]:
    """One content field rendered for recipient after recipient (in one thread); whatever
    goes wrong for a recipient is a ``RenderError``.

    Content made only of text and ``{{ variables }}`` (most messages) is rendered node by
    node on one reused context: no tag can keep state between renders or leave the context
    changed, so what a full ``Template.render`` sets up and tears down for every recipient
    buys nothing there. Any tag takes the full path."""
    if not source:
        return lambda profile: ""
    try:
        template = _compiled(source, field=field, html=html)
    except TemplateContentError as exc:
        problem = "; ".join(exc.messages)

        def refuse(profile: Mapping[str, Any]) -> str:
            raise RenderError(problem)

        return refuse
    parts = _text_and_variables(template)
    context = Context({"profile": {}}, autoescape=html)
    context.template = template  # where a missing variable finds string_if_invalid

    def render(profile: Mapping[str, Any]) -> str:
        try:
            if parts is None:
                return template.render(Context({"profile": profile}, autoescape=html))
            context.dicts[-1] = {"profile": profile}
            return "".join(
                part if isinstance(part, str) else part.render(context) for part in parts
            )
        except Exception as exc:  # this recipient's failure, not the batch's
            raise RenderError(f"{field}: {type(exc).__name__}: {exc}") from exc

    return render


def content_renderer(*, subject: str, body: str) -> Callable[[Mapping[str, Any]], tuple[str, str]]:
    """``render_content`` for many recipients of the same content: the templates are looked
    up once, then each call renders one recipient's ``(subject, body)``."""
    subject_of = _renderer(subject, field="subject", html=False)
    body_of = _renderer(body, field="body", html=False)

    def render(profile: Mapping[str, Any]) -> tuple[str, str]:
        data = read_only(profile)
        rendered_subject = subject_of(data).strip()
        rendered_body = body_of(data)
        if not rendered_body.strip():
            raise RenderError("The body renders to nothing for this profile.")
        return rendered_subject, rendered_body

    return render


def render_content(*, subject: str, body: str, profile: Mapping[str, Any]) -> tuple[str, str]:
    """Render subject and body for one recipient whose data is ``profile`` (see
    ``profile_context``). Raises ``RenderError`` when this recipient cannot get the message,
    including when the body renders to nothing.
    """
    return content_renderer(subject=subject, body=body)(profile)


def render_html(*, html_body: str, profile: Mapping[str, Any]) -> str:
    """Render an HTML body (autoescaped) for one recipient; raises ``RenderError``."""
    return _renderer(html_body, field="html_body", html=True)(read_only(profile))
