"""What one message may cost to render: a time and a size, spent as it renders.

Delivery renders in worker threads, where no signal can interrupt a render, so the budget
is enforced cooperatively, from inside the render:

* every node of a compiled template (``instrument``) checks the clock before it renders and
  charges its output after (a block only what it adds to its children's output, so nothing
  is counted twice); an empty loop body gets a checkpoint so that every turn still checks;
* every filter of the sandbox checks its arguments before it runs and its output after
  (``channels.rendering.sandbox``), so that no single call allocates without bound;
* the fast path for text and ``{{ variables }}`` charges each piece it writes.

The time limit is wall time, cheap to read on every node. Past it, the render gets a grace of
half the limit, judged by the thread's CPU clock: if the thread ran for at least half of the
grace, the render is over its time; if it mostly waited (for a CPU on a busy machine, or
for the GIL held by the other sending thread), it gets another grace, up to
``_MOST_WAIT_FACTOR`` times the limit in all. A message is thus never failed because its
thread was descheduled, and a runaway template still stops within about 1.5 times the
limit. The size limit counts every character a template generates, including what a
filter or ``{% spaceless %}`` then drops.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from time import monotonic, thread_time
from typing import Any

from django.conf import settings
from django.template import Context, Template
from django.template.base import Node, TextNode
from django.template.defaulttags import ForNode

__all__ = [
    "Budget",
    "RenderBudgetExceeded",
    "RenderError",
    "RenderLimits",
    "children",
    "instrument",
    "render_limits",
    "this_thread",
]

# A thread kept off the CPU past the limit is given more time, but never more than this
# many times the limit in all.
_MOST_WAIT_FACTOR = 10


class RenderError(Exception):
    """Content that could not be rendered for one recipient."""


class RenderBudgetExceeded(RenderError):
    """A message over one of its render limits; the message names the setting."""


@dataclass(frozen=True, slots=True)
class RenderLimits:
    timeout_ms: int
    max_chars: int

    def too_long(self) -> str:
        return f"the message is longer than SALVO_RENDER_MAX_CHARS ({self.max_chars:,} characters)."

    def too_slow(self) -> str:
        return f"rendering took longer than SALVO_RENDER_TIMEOUT_MS ({self.timeout_ms:,} ms)."


def render_limits() -> RenderLimits:
    """The limits of one message, as the settings give them now (read only here)."""
    return RenderLimits(
        timeout_ms=settings.SALVO_RENDER_TIMEOUT_MS, max_chars=settings.SALVO_RENDER_MAX_CHARS
    )


class Budget:
    """One message's allowance, spent by its renders in one thread. ``start`` begins a
    message (a renderer keeps one Budget for all its recipients, one after the other)."""

    __slots__ = (
        "charged",
        "cpu_mark",
        "deadline",
        "limits",
        "max_chars",
        "started",
        "timeout_s",
        "wall_mark",
    )

    def __init__(self, limits: RenderLimits) -> None:
        self.limits = limits
        self.max_chars = limits.max_chars
        self.timeout_s = limits.timeout_ms / 1000
        self.wall_mark = 0.0

    def start(self) -> Budget:
        """Begin a message: the full allowance, spent by this thread's renders from now."""
        self.started = monotonic()
        self.deadline = self.started + self.timeout_s
        self.charged = 0
        self.cpu_mark = -1.0
        this_thread.budget = self
        return self

    def past_deadline(self) -> None:
        """Called once the wall clock passed the deadline: fail the render if its thread
        is really spending the time, else give it a grace (see the module docstring)."""
        now, cpu = monotonic(), thread_time()
        if self.cpu_mark >= 0:
            ran = cpu - self.cpu_mark >= (now - self.wall_mark) / 2
            if ran or now - self.started >= _MOST_WAIT_FACTOR * self.timeout_s:
                raise RenderBudgetExceeded(self.limits.too_slow())
        self.cpu_mark, self.wall_mark = cpu, now
        self.deadline = now + self.timeout_s / 2

    def charge(self, chars: int) -> None:
        self.charged += chars
        if self.charged > self.max_chars:
            raise self.too_long()

    def check_result(self, result: Any) -> None:
        """After a filter: its result (a string, or a list of strings) may be no longer
        than a whole message, and the time goes on."""
        if isinstance(result, str):
            size = len(result)
        elif isinstance(result, list | tuple):
            size = sum(len(item) for item in result if isinstance(item, str))
        else:
            size = 0
        if size > self.max_chars:
            raise self.too_long()
        if monotonic() >= self.deadline:
            self.past_deadline()

    def too_long(self) -> RenderBudgetExceeded:
        return RenderBudgetExceeded(self.limits.too_long())


# ``this_thread.budget``: the budget of the message this thread is rendering (set by
# ``Budget.start``). Filters are plain functions of their input and argument, so they find
# it here rather than in the template context; nodes too, as it costs less.
this_thread = threading.local()


# --- every node of a compiled template renders within the budget -----------------------------


def children(node: Node) -> Iterator[Node]:
    """The nodes a node renders (each once, although ``{% if %}`` lists them twice)."""
    seen: set[int] = set()
    lists = [getattr(node, attr, None) or [] for attr in node.child_nodelists]
    # {% if %} keeps its branches in a list of (condition, nodelist) pairs.
    lists += [nodelist for _condition, nodelist in getattr(node, "conditions_nodelists", [])]
    for nodelist in lists:
        for child in nodelist:
            if id(child) not in seen:
                seen.add(id(child))
                yield child


class _Checkpoint(Node):
    """Stands in an empty loop body, so that every turn of the loop checks the time."""

    def render(self, context: Context) -> str:
        return ""


def _text(node: TextNode) -> Callable[[Context], str]:
    # Text writes at least one character: a loop of text alone is bounded by the size limit,
    # so text only charges (the cheapest check, on the most common node).
    text, size = node.s, len(node.s)

    def render_text(context: Context) -> str:
        budget: Budget = this_thread.budget
        budget.charged += size
        if budget.charged > budget.max_chars:
            raise budget.too_long()
        return text

    return render_text


def _leaf(node: Node) -> Callable[[Context], Any]:
    render: Callable[[Context], Any] = node.render_annotated

    def render_leaf(context: Context) -> Any:
        budget: Budget = this_thread.budget
        if monotonic() >= budget.deadline:
            budget.past_deadline()
        output = render(context)
        budget.charged += len(output)
        if budget.charged > budget.max_chars:
            raise budget.too_long()
        return output

    return render_leaf


def _block(node: Node) -> Callable[[Context], Any]:
    render: Callable[[Context], Any] = node.render_annotated

    def render_block(context: Context) -> Any:
        budget: Budget = this_thread.budget
        if monotonic() >= budget.deadline:
            budget.past_deadline()
        before = budget.charged
        output = render(context)
        # The children were charged as they rendered: charge only what the block adds to
        # their output ({% filter center:"80" %}), never what it drops ({% spaceless %}).
        added = len(output) - (budget.charged - before)
        if added > 0:
            budget.charge(added)
        return output

    return render_block


def instrument(template: Template) -> Template:
    """Make every node of a compiled template render within the thread's current budget.

    Done once per compiled template (they are cached and shared by threads): each node's
    ``render_annotated``, which Django calls for every node it renders, is replaced."""
    pending: list[Node] = list(template.nodelist)
    while pending:
        node = pending.pop()
        if isinstance(node, ForNode) and not node.nodelist_loop:
            node.nodelist_loop.append(_Checkpoint())  # type: ignore[arg-type]
        inner = list(children(node))
        if isinstance(node, TextNode):
            node.render_annotated = _text(node)  # type: ignore[method-assign,assignment]
        else:
            node.render_annotated = (_block if inner else _leaf)(node)  # type: ignore[method-assign,assignment]
        pending.extend(inner)
    return template
