from typing import Any

from django.core.exceptions import PermissionDenied, ValidationError
from django_fsm import ConcurrentTransition, TransitionNotAllowed

from .choices import CheckLevel


class CampaignConflict(Exception):
    """The campaign's current state does not allow the operation (HTTP 409 at the API)."""


# What the services raise when the campaign's state or the user refuses an operation (a
# refusal of bad input is a ValidationError besides).
REFUSALS = (TransitionNotAllowed, ConcurrentTransition, CampaignConflict, PermissionDenied)


def refusal_text(error: Exception) -> str:
    """A refusal in words, for a page's message."""
    if isinstance(error, ValidationError):
        return " ".join(error.messages)
    return str(error) or error.__class__.__name__


class ActivationRefused(ValidationError):
    """The review refuses the activation: it has errors, or warnings nobody acknowledged.

    A ``ValidationError`` (400) whose messages are the errors, or else the warnings left
    to acknowledge, each led by its code; ``review`` is the whole review
    (``campaigns.review.CampaignReview``) and ``refused`` the checks that refused."""

    def __init__(self, *, review: Any, refused: list[Any]) -> None:
        self.review = review
        self.refused = refused
        errors = [check for check in refused if check.level == CheckLevel.ERROR]
        if errors:
            messages = [check.message for check in errors]
        else:
            messages = [f"Acknowledge “{check.code}”: {check.message}" for check in refused]
        super().__init__(messages, code="activation_refused")

    @property
    def unacknowledged(self) -> list[str]:
        """The codes of the warnings left to acknowledge (none while errors refuse)."""
        return [check.code for check in self.refused if check.level == CheckLevel.WARNING]
