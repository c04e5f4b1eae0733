"""The recipient's data as content sees it: plain JSON-shaped values, read-only all the way
down.

A template can call any method of a value that takes no argument (``{{ profile.clear }}``,
``{{ profile.tags.pop }}``). The profile's mappings and lists are therefore built as
subclasses of ``dict`` and ``list`` whose changing methods refuse, and carry Django's
``alters_data`` mark, so that a template renders them as empty instead of calling them.
Being a ``dict`` and a ``list`` still, they print (``{{ profile.tags }}`` is ``['a', 'b']``),
serialise (``|json_script``) and iterate as before, at the cost of one copy per container.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NoReturn

from segments.models import PROFILE_CONTENT_FIELDS

if TYPE_CHECKING:
    from segments.models import Profile

__all__ = ["PROFILE_FIELDS", "profile_context", "read_only"]

# Profile fields exposed to content (the model's, less what segments.models.NOT_CONTENT keeps
# back); attributes are added beside them (and under ``attributes``), never over them.
PROFILE_FIELDS = PROFILE_CONTENT_FIELDS


def _refuse_change(self: Any, *args: Any, **kwargs: Any) -> NoReturn:
    raise TypeError("A recipient's data is read-only in message content.")


# Django's convention: a template renders a method marked so as empty, never calls it.
_refuse_change.alters_data = True  # type: ignore[attr-defined]


class _ReadOnlyDict(dict[str, Any]):
    __slots__ = ()


class _ReadOnlyList(list[Any]):
    __slots__ = ()


for _name in (
    "__setitem__",
    "__delitem__",
    "__ior__",
    "clear",
    "pop",
    "popitem",
    "setdefault",
    "update",
):
    setattr(_ReadOnlyDict, _name, _refuse_change)
for _name in (
    "__setitem__",
    "__delitem__",
    "__iadd__",
    "__imul__",
    "append",
    "clear",
    "extend",
    "insert",
    "pop",
    "remove",
    "reverse",
    "sort",
):
    setattr(_ReadOnlyList, _name, _refuse_change)

_SCALARS = frozenset({str, int, float, bool, type(None)})


def read_only(value: Any) -> Any:
    """JSON-shaped, read-only data only, so that nothing callable, object-like or changeable
    reaches a template (a value already made read-only comes back as it is)."""
    kind = type(value)
    # Exact types first: what JSON decodes to, without the cost of ABC checks.
    if kind in _SCALARS or kind is _ReadOnlyDict or kind is _ReadOnlyList:
        return value
    if kind is dict or isinstance(value, Mapping):
        return _ReadOnlyDict({str(key): read_only(item) for key, item in value.items()})
    if kind is list or isinstance(value, list | tuple):
        return _ReadOnlyList([read_only(item) for item in value])
    if isinstance(value, str | int | float | bool):
        return value
    return str(value)


def profile_context(profile: Profile | Mapping[str, Any]) -> Mapping[str, Any]:
    """The data a template sees as ``profile``: its own fields, and its attributes both
    flattened (``profile.first_name``) and nested (``profile.attributes.first_name``), all
    read-only.

    Accepts a ``Profile`` or a mapping with the same keys (e.g. a ``.values()`` row), so
    batches need not build model instances.
    """
    if isinstance(profile, Mapping):
        fields = {name: profile.get(name, "") for name in PROFILE_FIELDS}
        attributes = profile.get("attributes") or {}
    else:
        fields = {name: getattr(profile, name) for name in PROFILE_FIELDS}
        attributes = profile.attributes or {}
    attributes = read_only(attributes) if isinstance(attributes, Mapping) else _ReadOnlyDict()
    context = _ReadOnlyDict(attributes)
    # dict's own methods fill it, before any template sees it.
    dict.update(context, {name: read_only(value) for name, value in fields.items()})
    dict.__setitem__(context, "attributes", attributes)
    return context
