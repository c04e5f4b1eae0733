"""Rendering one recipient's message, within the message's budget."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from django.template import Context, Template
from django.template.base import TextNode, VariableNode

from .budget import Budget, RenderBudgetExceeded, RenderError, render_limits
from .checks import ContentProblem, compiled
from .profile import read_only
from .sandbox import render_in_full

__all__ = ["content_renderer", "html_renderer", "render_content", "render_html"]

# Renders one field for a recipient's profile data, an API trigger's context (or None),
# spending the budget.
FieldRenderer = Callable[[Mapping[str, Any], Mapping[str, Any] | None, Budget], str]
# One recipient's (subject, body) from its profile data and, for an API-triggered
# campaign, its trigger's context.
ContentRenderer = Callable[..., tuple[str, str]]


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


def _field_renderer(
    source: str, *, field: str, html: bool, trigger_context: bool = False
) -> FieldRenderer:
    """One content field rendered for recipient after recipient (in one thread), spending
    the budget it is given; whatever goes wrong for a recipient is a ``RenderError``.

    Content made only of text and ``{{ variables }}`` (most messages) is rendered node by
    node on one reused context: no tag can keep state between renders or leave the context
    changed, so what a full ``Template.render`` sets up and tears down for every recipient
    buys nothing there. It charges each piece it writes; its filters check their own
    arguments, results and the time. Any tag takes the full path, where every node does."""
    if not source:
        return lambda profile, trigger, budget: ""
    try:
        template = compiled(source, html, trigger_context)
    except ContentProblem as problem:
        refusal = f"{field}: {problem}"

        def refuse(
            profile: Mapping[str, Any], trigger: Mapping[str, Any] | None, budget: Budget
        ) -> str:
            raise RenderError(refusal)

        return refuse
    parts = _text_and_variables(template)
    if parts is None:

        def render_path(
            profile: Mapping[str, Any], trigger: Mapping[str, Any] | None, budget: Budget
        ) -> str:
            return render_in_full(template, profile, html=html, context=trigger)

    else:
        text_and_variables = parts
        context = Context({"profile": {}}, autoescape=html)
        context.template = template  # where a missing variable finds string_if_invalid

        def render_path(
            profile: Mapping[str, Any], trigger: Mapping[str, Any] | None, budget: Budget
        ) -> str:
            context.dicts[-1] = (
                {"profile": profile}
                if trigger is None
                else {"profile": profile, "context": trigger}
            )
            pieces = []
            charged, most = budget.charged, budget.max_chars
            for part in text_and_variables:
                piece: str = part if isinstance(part, str) else part.render(context)
                charged += len(piece)
                if charged > most:
                    raise budget.too_long()
                pieces.append(piece)
            budget.charged = charged
            return "".join(pieces)

    def render(
        profile: Mapping[str, Any], trigger: Mapping[str, Any] | None, budget: Budget
    ) -> str:
        try:
            return render_path(profile, trigger, budget)
        except RenderBudgetExceeded as exc:
            raise RenderBudgetExceeded(f"{field}: {exc}") from None
        except Exception as exc:  # this recipient's failure, not the batch's
            raise RenderError(f"{field}: {type(exc).__name__}: {exc}") from exc

    return render


def content_renderer(*, subject: str, body: str, trigger_context: bool = False) -> ContentRenderer:
    """``render_content`` for many recipients of the same content: the templates are looked
    up once, then each call renders one recipient's ``(subject, body)`` within one message's
    budget (``SALVO_RENDER_TIMEOUT_MS``, ``SALVO_RENDER_MAX_CHARS``, as set when the
    renderer is made). Use a renderer in one thread.

    With `trigger_context` (an API-triggered campaign) the content may read
    ``{{ context.<key> }}``: each call then takes the recipient's trigger context as its
    second argument (None renders it empty)."""
    subject_of = _field_renderer(
        subject, field="subject", html=False, trigger_context=trigger_context
    )
    body_of = _field_renderer(body, field="body", html=False, trigger_context=trigger_context)
    budget = Budget(render_limits())

    def render(
        profile: Mapping[str, Any], context: Mapping[str, Any] | None = None
    ) -> tuple[str, str]:
        try:
            data = read_only(profile)
            trigger = None if context is None else read_only(context)
        except Exception as exc:  # data too deep to copy: this recipient's failure
            raise RenderError(f"The profile's data: {type(exc).__name__}: {exc}") from exc
        budget.start()
        rendered_subject = subject_of(data, trigger, budget).strip()
        rendered_body = body_of(data, trigger, budget)
        if not rendered_body.strip():
            raise RenderError("The body renders to nothing for this profile.")
        return rendered_subject, rendered_body

    return render


def render_content(*, subject: str, body: str, profile: Mapping[str, Any]) -> tuple[str, str]:
    """Render subject and body for one recipient whose data is ``profile`` (see
    ``profile_context``). Raises ``RenderError`` when this recipient cannot get the message,
    including when the body renders to nothing or is over a render limit
    (``RenderBudgetExceeded``).
    """
    return content_renderer(subject=subject, body=body)(profile)


def html_renderer(*, html_body: str, trigger_context: bool = False) -> Callable[..., str]:
    """``render_html`` for many recipients of the same HTML part: the template is looked up
    once, then each call renders one recipient's HTML part (autoescaped) as a message of
    its own budget, '' when there is none; its arguments are those of a
    ``content_renderer``'s call. Use a renderer in one thread."""
    html_of = _field_renderer(
        html_body, field="html_body", html=True, trigger_context=trigger_context
    )
    budget = Budget(render_limits())

    def render(profile: Mapping[str, Any], context: Mapping[str, Any] | None = None) -> str:
        if not html_body:
            return ""
        try:
            data = read_only(profile)
            trigger = None if context is None else read_only(context)
        except Exception as exc:  # data too deep to copy: this recipient's failure
            raise RenderError(f"The profile's data: {type(exc).__name__}: {exc}") from exc
        return html_of(data, trigger, budget.start())

    return render


def render_html(*, html_body: str, profile: Mapping[str, Any]) -> str:
    """Render an HTML body (autoescaped) for one recipient, as a message of its own budget;
    raises ``RenderError``."""
    return html_renderer(html_body=html_body)(profile)
