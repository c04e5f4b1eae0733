"""Proofs: a campaign's actions sent for real to the test profiles before it goes out.

"Send proof" (the admin's button, ``POST /api/campaigns/{id}/proof/``, ``manage.py campaign
proof``) takes the version a preview shows (the open draft, else the running version), and
sends each of its actions to each test profile (``Profile.is_test``, flagged in the
profile's admin, the API or an import) through the action's preset and its real provider
backend, rendered by the delivery engine's own sender (``delivery.action_sender``, as the preview
does): the same data, templates, budgets, consent and unsubscribe headers as a delivery.
A subject (an email's, a push's title, a webhook's) starts with ``[Proof]``.

Test profiles are a flag on the profile rather than a chosen segment: a colleague's own
address is a fact about that profile, the same for every campaign, and the flag is one
partial index away (a segment would need choosing per campaign and could grow into an
audience by a rule's mistake). `profiles` / `external_ids` narrow a proof to some of them.

A proof is recorded apart, as `ProofSend` rows: no execution, no `Delivery` row, nothing in
the counters or reports, and nothing that makes a profile "already sent" for the campaign.
Its provider idempotency key is the proof's id negated, so it never meets a delivery's
(positive) id at a provider that drops repeats: the real send to the same profile later
still goes out.

Asking records the rows (pending) and queues `proof_send_task` once the transaction
commits: a slow provider never holds a web request. The task sends each pending row once
and records its outcome; a provider's passing error is recorded as a failure (a proof is
asked for again, not retried for minutes). A worker killed mid-send leaves its rows pending
and the task's redelivery sends them (providers that honour the key drop the repeat).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from channels.choices import CHANNELS_WITH_SUBJECT
from config.permissions import require_perms
from segments.models import Profile

from . import tasks
from .choices import DeliveryStatus, ProofStatus
from .delivery import action_sender, recipient_due
from .models import Campaign, ProofSend
from .operations import VIEW_CAMPAIGN
from .preview import preview_actions, preview_version, profile_row

SEND_PROOF = "campaigns.send_proof"
PROOF_PERMISSIONS = (VIEW_CAMPAIGN, SEND_PROOF)
PROOF_SUBJECT_PREFIX = "[Proof] "
# The campaign page lists this many of the campaign's newest proof sends.
RECENT_PROOF_SENDS = 20

OUTCOME_STATUS: dict[str, str] = {
    DeliveryStatus.SENT: ProofStatus.SENT,
    DeliveryStatus.SKIPPED: ProofStatus.SKIPPED,
    DeliveryStatus.FAILED: ProofStatus.FAILED,
    # A passing provider error the engine would retry later: a proof says it now.
    DeliveryStatus.PENDING: ProofStatus.FAILED,
}


def proof_max_recipients() -> int:
    return settings.SALVO_PROOF_MAX_RECIPIENTS


def proof_recipients(
    *, profiles: Sequence[int] = (), external_ids: Sequence[str] = ()
) -> list[Profile]:
    """The test profiles a proof goes to: all of them, or those named (by id or external
    id, each of which must be a test profile). `ValidationError` when there is none, when
    a named one is no test profile, or when there are more than
    ``SALVO_PROOF_MAX_RECIPIENTS``."""
    limit = proof_max_recipients()
    tests = Profile.objects.filter(is_test=True).order_by("pk")
    if profiles or external_ids:
        # More names than the limit are refused before any of them is looked up.
        asked = len(set(profiles)) + len(set(external_ids))
        if asked > limit:
            raise ValidationError({"profiles": _too_many(asked, limit)})
        found = list(tests.filter(pk__in=set(profiles))) if profiles else []
        by_external = tests.filter(external_id__in=set(external_ids)) if external_ids else []
        found += [profile for profile in by_external if profile not in found]
        missing_ids = sorted(set(profiles) - {profile.pk for profile in found})
        missing_external = sorted(set(external_ids) - {profile.external_id for profile in found})
        errors: dict[str, str] = {}
        if missing_ids:
            errors["profiles"] = (
                f"Not a test profile: {', '.join(map(str, missing_ids))}. A proof goes only "
                "to profiles flagged as test profiles."
            )
        if missing_external:
            errors["external_ids"] = (
                f"Not a test profile: {', '.join(missing_external)}. A proof goes only to "
                "profiles flagged as test profiles."
            )
        if errors:
            raise ValidationError(errors)
        return sorted(found, key=lambda profile: profile.pk)
    found = list(tests[: limit + 1])
    if not found:
        raise ValidationError(
            {
                "profiles": "No test profile to send a proof to: flag your own profile as a "
                "test profile (“test profile” on the profile's page, or `is_test` in the API)."
            }
        )
    if len(found) > limit:
        raise ValidationError(
            {
                "profiles": _too_many(tests.count(), limit)
                + " Name the ones to send it to (the API's `external_ids`, the command's "
                "`--profile`), or unflag the others."
            }
        )
    return found


def _too_many(count: int, limit: int) -> str:
    return (
        f"A proof goes to at most {limit} test profiles (SALVO_PROOF_MAX_RECIPIENTS); "
        f"{count} were asked for."
    )


@transaction.atomic
def campaign_proof_request(
    *,
    campaign: Campaign,
    user: Any,
    profiles: Sequence[int] = (),
    external_ids: Sequence[str] = (),
) -> list[ProofSend]:
    """Record a proof of every action of the campaign's open draft (else its running
    version) to the test profiles (see `proof_recipients`), pending, and have a worker send
    them once this commits. Returns the rows, action by action. `PermissionDenied` without
    the view and ``campaigns.send_proof`` permissions; `ValidationError` when the version
    has no action or the recipients are refused."""
    require_perms(user, *PROOF_PERMISSIONS, to="send a proof of a campaign")
    version = preview_version(campaign=campaign)
    actions = list(preview_actions(version=version))
    if not actions:
        raise ValidationError(
            {"actions": f"Version {version.number} has no action: there is nothing to prove."}
        )
    recipients = proof_recipients(profiles=profiles, external_ids=external_ids)
    requested_by = user if user is not None and user.is_authenticated else None
    sends = ProofSend.objects.bulk_create(
        ProofSend(
            campaign=campaign,
            version=version,
            action=action,
            profile=profile,
            requested_by=requested_by,
        )
        for action in actions
        for profile in recipients
    )
    ids = [send.pk for send in sends]
    transaction.on_commit(lambda: tasks.proof_send_task.delay(ids))
    return list(campaign_proof_sends(campaign=campaign).filter(pk__in=ids).order_by("pk"))


def proof_sends_send(*, proof_ids: Sequence[int]) -> int:
    """Send the still-pending proofs among `proof_ids` and record each outcome; returns
    how many were decided. Run by `proof_send_task`; a proof already decided is left."""
    pending = (
        ProofSend.objects.filter(pk__in=proof_ids, status=ProofStatus.PENDING)
        .select_related("campaign", "action__preset", "profile")
        .order_by("action_id", "pk")
    )
    by_action: dict[int, list[ProofSend]] = {}
    for proof in pending:
        by_action.setdefault(proof.action_id, []).append(proof)
    for proofs in by_action.values():
        _send_action_proofs(proofs)
    return sum(map(len, by_action.values()))


def _send_action_proofs(proofs: list[ProofSend]) -> None:
    """One action's proofs in one provider call, through the engine's sender."""
    first = proofs[0]
    sender = action_sender(action=first.action, campaign=first.campaign)
    by_key = {-proof.pk: proof for proof in proofs}
    try:
        prepared = sender.prepare(
            [recipient_due(-proof.pk, profile_row(proof.profile)) for proof in proofs]
        )
        messages = [
            (due, _proof_message(message, first.action.channel))
            for due, message in prepared.messages
        ]
        outcomes = prepared.outcomes + (sender.send(messages) if messages else [])
    finally:
        sender.close()
    now = timezone.now()
    for outcome in outcomes:
        proof = by_key[outcome.delivery_id]
        proof.status = OUTCOME_STATUS[outcome.status]
        if proof.status == ProofStatus.SENT:
            proof.provider_message_id = outcome.text[:255]
            proof.sent_at = now
        else:
            proof.error = outcome.text
    ProofSend.objects.bulk_update(proofs, ["status", "provider_message_id", "error", "sent_at"])


def _proof_message(message: Any, channel: str) -> Any:
    if channel not in CHANNELS_WITH_SUBJECT:
        return message  # an SMS is its body alone: it goes as the recipients will get it
    return replace(message, subject=f"{PROOF_SUBJECT_PREFIX}{message.subject}")


def campaign_proof_sends(*, campaign: Campaign) -> QuerySet[ProofSend]:
    """The campaign's proof sends, newest first, with what a list shows of each."""
    return ProofSend.objects.filter(campaign=campaign).select_related(
        "version", "action", "profile", "requested_by"
    )


def proof_sends_pending(*, proof_ids: Sequence[int]) -> int:
    return ProofSend.objects.filter(pk__in=proof_ids, status=ProofStatus.PENDING).count()
