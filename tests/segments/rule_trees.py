"""What the rule tests share to write trees: a condition node, and the longest text a
rule's value may hold."""

from typing import Any

from segments import rules

LONGEST = "\U0001f600" * rules.MAX_TEXT_LENGTH  # four bytes a character in UTF-8


def cond(field: str, op: str, value: Any) -> dict[str, Any]:
    """A condition node of a rule tree."""
    return {"field": field, "op": op, "value": value}
