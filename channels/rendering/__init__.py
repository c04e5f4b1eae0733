"""Personalised message content, rendered in a sandbox, within a budget per message.

Subjects and bodies are Django template language run by a dedicated engine with an
allowlist of Django's default tags and filters (``sandbox``: what is left out and why, and
how each allowed one is bounded), and a context holding nothing but one profile's data,
read-only (``profile``).

* ``validate_content`` runs when content is saved and when a campaign is activated
  (``checks``): whatever can never render — a syntax error, a tag that reaches outside the
  message (``{% load %}``, ``{% querystring %}``), a private attribute, a variable other
  than ``profile`` (and ``context``, an API trigger's, for an API-triggered campaign), a
  literal argument over a limit (``ljust:"50000000"``) — is refused with a message naming
  the field and the problem.
* ``render_content`` / ``content_renderer`` render one recipient's subject and body within
  one message's budget (``budget``): ``SALVO_RENDER_TIMEOUT_MS`` of rendering and
  ``SALVO_RENDER_MAX_CHARS`` characters, enforced as the message renders, so a runaway
  template stops promptly. Whatever goes wrong for that recipient, a limit included, becomes
  a ``RenderError``, a per-recipient failure.

A missing field renders as an empty string, so ``{{ profile.first_name|default:"there" }}``
is how content says what to write when a profile lacks a value.
"""

from .budget import RenderBudgetExceeded, RenderError, RenderLimits, render_limits
from .checks import TRIGGER_CONTEXT, TemplateContentError, content_profile_keys, validate_content
from .profile import PROFILE_FIELDS, profile_context
from .renderers import content_renderer, html_renderer, render_content, render_html
from .sandbox import ALLOWED_FILTERS, ALLOWED_TAGS, REFUSED_FILTERS, REFUSED_TAGS

__all__ = [
    "ALLOWED_FILTERS",
    "ALLOWED_TAGS",
    "PROFILE_FIELDS",
    "REFUSED_FILTERS",
    "REFUSED_TAGS",
    "TRIGGER_CONTEXT",
    "RenderBudgetExceeded",
    "RenderError",
    "RenderLimits",
    "TemplateContentError",
    "content_profile_keys",
    "content_renderer",
    "html_renderer",
    "profile_context",
    "render_content",
    "render_html",
    "render_limits",
    "validate_content",
]
