"""The template language message content may use: an allowlist of Django's default tags and
filters, each bounded so that no single call can outgrow the message's budget.

The engine is a dedicated ``Engine`` (never the project's): no loaders, no libraries, and as
builtins only the library below. A tag or filter Django adds in a new version stays out until
it is audited and listed here.

Audit of Django's default library (5.2), against ``SALVO_RENDER_MAX_CHARS`` ("the limit"):

Tags refused (``REFUSED_TAGS``), with the reason shown to the author: ``load``, ``include``,
``extends``, ``block`` (code and other templates), ``debug`` (prints the whole context),
``url`` (the project's URLs), ``csrf_token`` and ``querystring`` (a web request).

Tags allowed (``ALLOWED_TAGS``):

* ``for`` — the one construct that multiplies work: every turn renders instrumented nodes,
  which check the time (an empty body gets a checkpoint, see ``budget.instrument``);
* ``lorem`` — count × the shortest unit it makes must fit the limit (checked at save for a
  literal count, before generating for a count from the profile); paragraphs are generated
  one at a time within what is left of the budget;
* ``now`` — the format is a literal of the template; ``widthratio`` — writes a number, its
  width must be a number (checked at save: else every recipient fails);
* ``cycle``, ``firstof``, ``templatetag``, ``verbatim``, ``comment``, ``resetcycle`` — write
  what the template holds or a value as it is;
* ``if``, ``with``, ``autoescape``, ``spaceless``, ``filter``, ``ifchanged``, ``regroup`` —
  render what they hold (``regroup`` writes nothing, ``ifchanged`` renders its block to
  compare it), through the same instrumented nodes and bounded filters; ``filter`` writes a
  number or a list its filters end with as text, as ``{{ … }}`` does (Django's fails).

Filters whose argument alone can make the output arbitrarily long are checked before the
call (``_LIMIT_RULES``; at save for a literal argument, at render for one from the profile):
``ljust``, ``rjust``, ``center`` (a width up to the limit), ``stringformat`` (one conversion,
width and precision up to the limit), ``floatformat`` (decimal places up to the limit; Django
itself bounds huge exponents of the value), ``join`` (separator × items within the limit).
Arguments that would fail every recipient are refused at save too: ``wordwrap`` (a width of at
least 1), ``urlizetrunc`` (a number), ``divisibleby`` (a number other than 0).

Every other filter's result (a string, or a list of strings) is checked after the call
against the limit, and the clock with it, which bounds chains of filters. Their output grows
by a bounded factor: ``addslashes`` (×2, doubling at each link of a chain), ``escape``,
``force_escape``, ``escapejs``, ``escapeseq``, ``json_script`` (×6), ``iriencode``,
``urlencode`` (×12: 3 per UTF-8 byte), ``linebreaks``, ``linebreaksbr`` (×5),
``linenumbers`` (a number per line), ``unordered_list`` (tabs per level), ``urlize``,
``urlizetrunc`` (a link per URL), ``upper``, ``lower``, ``title``, ``capfirst`` (×3 for a few
letters), ``add`` (two inputs), ``make_list``, ``phone2numeric``, ``slugify``; or stays within the
input: ``cut``, ``dictsort``, ``dictsortreversed``, ``safe``, ``safeseq``, ``slice``,
``striptags``, ``truncatechars``, ``truncatechars_html``, ``truncatewords``,
``truncatewords_html``, ``wordcount``, ``wordwrap``.

Filters that take constant time and write no more than their input or argument run as Django
wrote them (``_CONSTANT_TIME``): ``default``, ``default_if_none``, ``divisibleby``,
``filesizeformat``, ``first``, ``get_digit``, ``last``, ``length``, ``pluralize``,
``random``, ``yesno``.

Filters refused (``REFUSED_FILTERS``): ``pprint``, a debugging aid that prints Python's
representation of a value; ``date``, ``time``, ``timesince``, ``timeuntil``, which format
dates and times, when a profile's data holds none (JSON: text and numbers), so they wrote
nothing or failed every recipient with a value.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

from django.template import Context, Engine, Library, Template, TemplateSyntaxError, defaultfilters
from django.template import defaulttags as django_tags
from django.template.base import Parser, Token, render_value_in_context
from django.template.defaulttags import FilterNode, LoremNode
from django.utils import lorem_ipsum

from .budget import Budget, RenderBudgetExceeded, RenderLimits, this_thread

__all__ = [
    "ALLOWED_FILTERS",
    "ALLOWED_TAGS",
    "REFUSED_FILTERS",
    "REFUSED_TAGS",
    "ArgumentRefused",
    "TagRefused",
    "argument_rule",
    "check_lorem_count",
    "check_widthratio_width",
    "engine",
    "lorem_count",
    "refusal_of",
    "render_in_full",
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
# A profile's data is text and numbers (JSON): these filters only format dates and times,
# writing nothing for text (|date, |time) or failing on it (|timesince, |timeuntil).
_NO_DATES = "a profile's data holds no dates, only text and numbers ({% now %} writes today's)"
REFUSED_FILTERS = {
    "date": _NO_DATES,
    "pprint": "it prints Python's debugging representation of a value",
    "time": _NO_DATES,
    "timesince": _NO_DATES,
    "timeuntil": _NO_DATES,
}


class TagRefused(TemplateSyntaxError):
    """A tag of Django's library that message content may not use."""


class ArgumentRefused(ValueError):
    """A filter or tag argument that can never render within the budget, or at all."""


# --- arguments -------------------------------------------------------------------------------


def _whole_number(value: Any, what: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        raise ArgumentRefused(f"{what} must be a whole number, not {value!r}.") from None


def _within(amount: int, what: str, limits: RenderLimits) -> None:
    if amount > limits.max_chars:
        raise RenderBudgetExceeded(
            f"{what} of {amount:,} characters is over SALVO_RENDER_MAX_CHARS "
            f"({limits.max_chars:,} characters)."
        )


def _width(name: str) -> Callable[[Any, RenderLimits], None]:
    def check(arg: Any, limits: RenderLimits) -> None:
        _within(_whole_number(arg, f"The width of |{name}"), f"|{name}: a width", limits)

    return check


# One printf-style conversion, as |stringformat takes it (without the leading %), with any
# text after it; "%%" is a literal percent sign.
_CONVERSION = re.compile(
    r"(?:\([^()]*\))?[#0\- +]*(?P<width>\d*)(?:\.(?P<precision>\d*))?[hlL]?[diouxXeEfFgGcrsa%]"
)


def _stringformat(arg: Any, limits: RenderLimits) -> None:
    spec = str(arg)
    match = _CONVERSION.match(spec)
    if match is None or "%" in spec[match.end() :].replace("%%", ""):
        raise ArgumentRefused(
            f'|stringformat takes one conversion, like "05d" or ".2f", not {spec!r}.'
        )
    for part in ("width", "precision"):
        if match[part]:
            _within(int(match[part]), f"|stringformat: a {part}", limits)


def _floatformat(arg: Any, limits: RenderLimits) -> None:
    places = str(arg).removesuffix("u").removesuffix("g").removesuffix("u")
    try:
        count = abs(int(places))
    except ValueError:
        return  # Django writes the value unchanged
    _within(count, "|floatformat: a precision", limits)


def _wordwrap(arg: Any, limits: RenderLimits) -> None:
    if _whole_number(arg, "The width of |wordwrap") < 1:
        raise ArgumentRefused(f"The width of |wordwrap must be at least 1, not {arg!r}.")


def _urlizetrunc(arg: Any, limits: RenderLimits) -> None:
    _whole_number(arg, "The length of |urlizetrunc")


def _divisibleby(arg: Any, limits: RenderLimits) -> None:
    if _whole_number(arg, "The divisor of |divisibleby") == 0:
        raise ArgumentRefused("|divisibleby:0 divides by zero.")


def check_widthratio_width(width: Any) -> None:
    """``{% widthratio %}``'s last argument must be a number: else Django fails the render."""
    _whole_number(width, "The width of {% widthratio %}")


# Arguments that can make a filter's output arbitrarily long: checked at save (a literal
# argument) and before every call (an argument from the profile).
_LIMIT_RULES: dict[str, Callable[[Any, RenderLimits], None]] = {
    "ljust": _width("ljust"),
    "rjust": _width("rjust"),
    "center": _width("center"),
    "stringformat": _stringformat,
    "floatformat": _floatformat,
}
# Literal arguments that would fail every recipient: refused at save. (From a profile, such
# an argument fails that recipient with Django's own error.)
_SAVE_RULES = {
    **_LIMIT_RULES,
    "wordwrap": _wordwrap,
    "urlizetrunc": _urlizetrunc,
    "divisibleby": _divisibleby,
}


# Filters that take constant time and write no more than their input or their argument:
# nothing to check, so they run as Django wrote them (|default is in most messages).
_CONSTANT_TIME = frozenset(
    {
        "default",
        "default_if_none",
        "divisibleby",
        "filesizeformat",
        "first",
        "get_digit",
        "last",
        "length",
        "pluralize",
        "random",
        "yesno",
    }
)


def argument_rule(filter_name: str) -> Callable[[Any, RenderLimits], None] | None:
    """What a filter's literal argument must satisfy to be saved (raising ``ArgumentRefused``
    or ``RenderBudgetExceeded``), or None when any argument will do."""
    return _SAVE_RULES.get(filter_name)


def _join_fits(items: Any, separator: Any, budget: Budget) -> None:
    try:
        joints = max(len(items) - 1, 0)
    except TypeError:
        return  # Django writes such a value unchanged
    _within(len(str(separator)) * joints, "|join: the separators", budget.limits)


# --- filters ---------------------------------------------------------------------------------


def _bounded(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """``func`` checking its argument before it runs, and its result and the time after."""
    if name in _CONSTANT_TIME:
        return func
    rule = _LIMIT_RULES.get(name)
    fits = _join_fits if name == "join" else None

    def bounded_filter(value: Any, *args: Any, **kwargs: Any) -> Any:
        budget: Budget = this_thread.budget
        if args:
            if rule is not None:
                rule(args[0], budget.limits)
            if fits is not None:
                fits(value, args[0], budget)
        result = func(value, *args, **kwargs)
        budget.check_result(result)
        return result

    # Keeps what Django reads from a filter: is_safe, needs_autoescape, expects_localtime,
    # its name, and (through __wrapped__) its signature, to count its arguments.
    return functools.update_wrapper(bounded_filter, func)


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


# --- tags ------------------------------------------------------------------------------------


def _refusing(name: str, reason: str) -> Callable[[Parser, Token], Any]:
    def refuse(parser: Parser, token: Token) -> Any:
        raise TagRefused(
            f"Line {token.lineno}: the {{% {name} %}} tag is not allowed in message content: "
            f"{reason}."
        )

    return refuse


_WORD = min(len(word) for word in (*lorem_ipsum.WORDS, *lorem_ipsum.COMMON_WORDS))
# The shortest unit {% lorem %} writes and what separates two of them, per method: a word;
# a paragraph of one sentence of three words (with a full stop); the same inside <p></p>.
_LOREM_UNIT = {"w": (_WORD, 1), "b": (3 * _WORD + 3, 2), "p": (3 * _WORD + 10, 2)}


def lorem_count(value: Any) -> int:
    """How many units ``{% lorem %}`` writes for this count, as Django reads it (1 for what
    is not a number); an infinite one fails every render."""
    try:
        return int(value)
    except (ValueError, TypeError):
        return 1
    except OverflowError:
        raise ArgumentRefused(
            f"The count of {{% lorem %}} must be a whole number, not {value!r}."
        ) from None


def check_lorem_count(count: int, method: str, limits: RenderLimits) -> None:
    unit, separator = _LOREM_UNIT[method]
    shortest = count * (unit + separator) - separator
    if shortest > limits.max_chars:
        raise RenderBudgetExceeded(
            f"{{% lorem {count} {method} %}} writes at least {shortest:,} characters, over "
            f"SALVO_RENDER_MAX_CHARS ({limits.max_chars:,} characters)."
        )


class _BoundedLoremNode(LoremNode):
    def render(self, context: Context) -> str:
        count = lorem_count(self.count.resolve(context))
        budget: Budget = this_thread.budget
        check_lorem_count(count, self.method, budget.limits)
        if self.method == "w":
            return lorem_ipsum.words(count, common=self.common)
        paragraphs: list[str] = []
        room = budget.max_chars - budget.charged
        for index in range(count):
            text = lorem_ipsum.COMMON_P if self.common and index == 0 else lorem_ipsum.paragraph()
            paragraphs.append(f"<p>{text}</p>" if self.method == "p" else text)
            room -= len(paragraphs[-1]) + 2
            if room < 0:
                raise budget.too_long()
        return "\n\n".join(paragraphs)


def _lorem(parser: Parser, token: Token) -> LoremNode:
    node = django_tags.lorem(parser, token)
    return _BoundedLoremNode(node.count, node.method, node.common)


class _TextFilterNode(FilterNode):
    """``{% filter %}`` writing its result as text, as ``{{ … }}`` would: Django's node
    hands a number or a list (``{% filter length %}``) to the template as it is, which
    then fails every render."""

    def render(self, context: Context) -> str:
        result = super().render(context)
        return result if isinstance(result, str) else render_value_in_context(result, context)


def _filter(parser: Parser, token: Token) -> FilterNode:
    node = django_tags.do_filter(parser, token)
    return _TextFilterNode(node.filter_expr, node.nodelist)


# --- the engine ------------------------------------------------------------------------------


_REPLACED_TAGS = {"filter": _filter, "lorem": _lorem}


def _library() -> Library:
    library = Library()
    library.tags = {
        name: _REPLACED_TAGS.get(name, compile_function)
        for name, compile_function in django_tags.register.tags.items()
        if name in ALLOWED_TAGS
    }
    library.tags.update({name: _refusing(name, reason) for name, reason in REFUSED_TAGS.items()})
    library.filters = {
        name: _bounded(name, func)
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


def render_in_full(template: Template, profile: Any, *, html: bool, context: Any = None) -> str:
    """Render a compiled, instrumented template for one recipient on a fresh context,
    spending the budget the caller started; `context` is an API trigger's context for the
    recipient (``{{ context.<key> }}``), when there is one."""
    variables = {"profile": profile}
    if context is not None:
        variables["context"] = context
    return template.render(Context(variables, autoescape=html))
