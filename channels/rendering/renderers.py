"""Rendering one recipient's message."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from django.template import Context, Template
from django.template.base import TextNode, VariableNode

from .checks import ContentProblem, compiled
from .profile import read_only

__all__ = ["RenderError", "content_renderer", "render_content", "render_html"]


class RenderError(Exception):
    """Content that could not be rendered for one recipient."""


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
        template = compiled(source, html)
    except ContentProblem as problem:
        refusal = f"{field}: {problem}"

        def refuse(profile: Mapping[str, Any]) -> str:
            raise RenderError(refusal)

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
