"""The template language message content may use: an allowlist of Django's default tags and
filters.

The engine is a dedicated ``Engine`` (never the project's): no loaders, no libraries, and as
builtins only the library below. A tag or filter Django adds in a new version stays out until
it is audited and listed here.

Tags refused (``REFUSED_TAGS``), with the reason shown to the author: ``load``, ``include``,
``extends``, ``block`` (code and other templates), ``debug`` (prints the whole context),
``url`` (the project's URLs), ``csrf_token`` and ``querystring`` (a web request). They parse
into an error naming the tag, so that the check refuses them where they are used (and not
inside ``{% comment %}`` or ``{% verbatim %}``).

Filters refused (``REFUSED_FILTERS``): ``pprint``, a debugging aid that prints Python's
representation of a value.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.template import Engine, Library, TemplateSyntaxError, defaultfilters
from django.template import defaulttags as django_tags
from django.template.base import Parser, Token

__all__ = [
    "ALLOWED_FILTERS",
    "ALLOWED_TAGS",
    "REFUSED_FILTERS",
    "REFUSED_TAGS",
    "ArgumentRefused",
    "TagRefused",
    "engine",
    "refusal_of",
]

ALLOWED_TAGS = frozenset(
    {
        "autoescape",
        "comment",
        "cycle",
        "filter",
        "firstof",
        "for",
        "if",
        "ifchanged",
        "lorem",
        "now",
        "regroup",
        "resetcycle",
        "spaceless",
        "templatetag",
        "verbatim",
        "widthratio",
        "with",
    }
)
REFUSED_TAGS = {
    "load": "it loads code",
    "include": "it reads other templates",
    "extends": "it reads other templates",
    "block": "it belongs to templates that extend others",
    "debug": "it prints everything the template can see",
    "url": "it needs the project's URLs",
    "csrf_token": "it needs a web request",
    "querystring": "it needs a web request",
}
ALLOWED_FILTERS = frozenset(
    {
        "add",
        "addslashes",
        "capfirst",
        "center",
        "cut",
        "date",
        "default",
        "default_if_none",
        "dictsort",
        "dictsortreversed",
        "divisibleby",
        "escape",
        "escapejs",
        "escapeseq",
        "filesizeformat",
        "first",
        "floatformat",
        "force_escape",
        "get_digit",
        "iriencode",
        "join",
        "json_script",
        "last",
        "length",
        "linebreaks",
        "linebreaksbr",
        "linenumbers",
        "ljust",
        "lower",
        "make_list",
        "phone2numeric",
        "pluralize",
        "random",
        "rjust",
        "safe",
        "safeseq",
        "slice",
        "slugify",
        "stringformat",
        "striptags",
        "time",
        "timesince",
        "timeuntil",
        "title",
        "truncatechars",
        "truncatechars_html",
        "truncatewords",
        "truncatewords_html",
        "unordered_list",
        "upper",
        "urlencode",
        "urlize",
        "urlizetrunc",
        "wordcount",
        "wordwrap",
        "yesno",
    }
)
REFUSED_FILTERS = {"pprint": "it prints Python's debugging representation of a value"}


class TagRefused(TemplateSyntaxError):
    """A tag of Django's library that message content may not use."""


class ArgumentRefused(ValueError):
    """A filter or tag argument that can never render."""


def _refused_filter(name: str, reason: str) -> Callable[..., Any]:
    """Parses, so that the check can name it with its reason; never renders."""

    def refused(value: Any, arg: Any = None) -> Any:
        raise ArgumentRefused(f"the |{name} filter is not allowed in message content: {reason}.")

    refused.refused = reason  # type: ignore[attr-defined]
    refused._filter_name = name  # type: ignore[attr-defined]
    return refused


def refusal_of(func: Callable[..., Any]) -> str | None:
    """Why a filter of the sandbox's library may not be used, or None when it may."""
    return getattr(func, "refused", None)


def _refusing(name: str, reason: str) -> Callable[[Parser, Token], Any]:
    def refuse(parser: Parser, token: Token) -> Any:
        raise TagRefused(
            f"Line {token.lineno}: the {{% {name} %}} tag is not allowed in message content: "
            f"{reason}."
        )

    return refuse


def _library() -> Library:
    library = Library()
    library.tags = {
        name: compile_function
        for name, compile_function in django_tags.register.tags.items()
        if name in ALLOWED_TAGS
    }
    library.tags.update({name: _refusing(name, reason) for name, reason in REFUSED_TAGS.items()})
    library.filters = {
        name: func
        for name, func in defaultfilters.register.filters.items()
        if name in ALLOWED_FILTERS
    }
    library.filters.update(
        {name: _refused_filter(name, reason) for name, reason in REFUSED_FILTERS.items()}
    )
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
    # The sandbox's library replaces Django's builtins (which include loader_tags).
    engine.template_builtins = [_library()]
    return engine


# Plain-text channels must not turn "Tom & Jerry" into "Tom &amp; Jerry"; HTML must escape.
_TEXT_ENGINE = _make_engine(autoescape=False)
_HTML_ENGINE = _make_engine(autoescape=True)


def engine(html: bool) -> Engine:
    return _HTML_ENGINE if html else _TEXT_ENGINE
