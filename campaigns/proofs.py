"""Proofs: a campaign's actions sent for real to the test profiles before it goes out.

"Send proof" (the admin's button, ``POST /api/campaigns/{id}/proof/``, ``manage.py campaign
proof``) takes the version a preview shows (the open draft, else the running version), and
sends each of its actions to each test profile (``Profile.is_test``, flagged in the
profile's admin, the API or an import) through the action's preset and its real provider
backend, rendered by the delivery engine's own sender (``delivery.action_sender``, as the preview
does): the same data, templates, budgets, consent and unsubscribe headers as a delivery.
A subject (an email's, a push's title, a webhook's) starts with ``[Proof]``.

Content experiments: an action with variants is proved once per variant (its own content
is A; `variants` chooses among A–E, by default every one of each action, so the marketer
sees each in their inbox), each rendered by the sender for a profile put in that
variant's group, as a worker's chunk renders a recipient of it, and its subject marked
with the label (``[Proof B] ``). An action with none of the variants asked for is left out.
``SALVO_PROOF_MAX_RECIPIENTS`` counts test profiles, as always; the refusal says how many
messages each would get (one per action and variant).

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
from .choices import VARIANT_LABELS, DeliveryStatus, ProofStatus
from .delivery import action_sender, recipient_due
from .models import Campaign, ChannelAction, ProofSend, Variant
from .operations import VIEW_CAMPAIGN
from .preview import preview_actions, preview_version, profile_row

SEND_PROOF = "campaigns.send_proof"
PROOF_PERMISSIONS = (VIEW_CAMPAIGN, SEND_PROOF)
PROOF_SUBJECT_PREFIX = "[Proof] "
# A variant's proof: "[Proof B] " (an action with variants marks each, A's too).
PROOF_VARIANT_SUBJECT_PREFIX = "[Proof {label}] "
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
    *, profiles: Sequence[int] = (), external_ids: Sequence[str] = (), messages_each: int = 0
) -> list[Profile]:
    """The test profiles a proof goes to: all of them, or those named (by id or external
    id, each of which must be a test profile). `ValidationError` when there is none, when
    a named one is no test profile, or when there are more than
    ``SALVO_PROOF_MAX_RECIPIENTS`` (the refusal says that each would get `messages_each`
    messages, when given)."""
    limit = proof_max_recipients()
    tests = Profile.objects.filter(is_test=True).order_by("pk")
    if profiles or external_ids:
        # More names than the limit are refused before any of them is looked up.
        asked = len(set(profiles)) + len(set(external_ids))
        if asked > limit:
            raise ValidationError({"profiles": _too_many(asked, limit, messages_each)})
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
                "profiles": _too_many(tests.count(), limit, messages_each)
                + " Name the ones to send it to (the API's `external_ids`, the command's "
                "`--profile`), or unflag the others."
            }
        )
    return found


def _too_many(count: int, limit: int, messages_each: int) -> str:
    """The limit counts test profiles, whatever the messages each gets: say both."""
    each = (
        f" Each test profile gets {messages_each} message{'s' if messages_each != 1 else ''}, "
        f"one per action and variant ({count * messages_each} in all here)."
        if messages_each
        else ""
    )
    return (
        f"A proof goes to at most {limit} test profiles (SALVO_PROOF_MAX_RECIPIENTS); "
        f"{count} were asked for.{each}"
    )


def proof_variants(
    actions: Sequence[ChannelAction], *, chosen: Sequence[str] = (), number: int
) -> list[tuple[ChannelAction, str]]:
    """Each (action, variant label) a proof sends, action by action, A first: the
    `chosen` labels each action has (default: all of them). `ValidationError` on
    ``variants`` for a label that no action of version `number` has."""
    offered = [
        (action, ["A", *(variant.label for variant in action.variants.all())]) for action in actions
    ]
    known = {label for _, labels in offered for label in labels}
    unknown = [label for label in dict.fromkeys(chosen) if label not in known]
    if unknown:
        has = ", ".join(label for label in VARIANT_LABELS if label in known)
        raise ValidationError(
            {
                "variants": f"Version {number} has no variant {', '.join(unknown)}: its "
                f"variants are {has}."
            }
        )
    wanted = set(chosen) if chosen else known
    return [(action, label) for action, labels in offered for label in labels if label in wanted]


@transaction.atomic
def campaign_proof_request(
    *,
    campaign: Campaign,
    user: Any,
    profiles: Sequence[int] = (),
    external_ids: Sequence[str] = (),
    variants: Sequence[str] = (),
) -> list[ProofSend]:
    """Record a proof of every action of the campaign's open draft (else its running
    version), each of its `variants` (default: all; see `proof_variants`), to the test
    profiles (see `proof_recipients`), pending, and have a worker send them once this
    commits. Returns the rows, action by action, variant by variant. `PermissionDenied`
    without the view and ``campaigns.send_proof`` permissions; `ValidationError` when the
    version has no action or no such variant, or the recipients are refused."""
    require_perms(user, *PROOF_PERMISSIONS, to="send a proof of a campaign")
    version = preview_version(campaign=campaign)
    actions = list(preview_actions(version=version))
    if not actions:
        raise ValidationError(
            {"actions": f"Version {version.number} has no action: there is nothing to prove."}
        )
    proved = proof_variants(actions, chosen=variants, number=version.number)
    recipients = proof_recipients(
        profiles=profiles, external_ids=external_ids, messages_each=len(proved)
    )
    requested_by = user if user is not None and user.is_authenticated else None
    sends = ProofSend.objects.bulk_create(
        ProofSend(
            campaign=campaign,
            version=version,
            action=action,
            variant=label,
            profile=profile,
            requested_by=requested_by,
        )
        for action, label in proved
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
        .prefetch_related("action__variants")
        .order_by("action_id", "variant", "pk")
    )
    by_action: dict[int, list[ProofSend]] = {}
    for proof in pending:
        by_action.setdefault(proof.action_id, []).append(proof)
    for proofs in by_action.values():
        _send_action_proofs(proofs)
    return sum(map(len, by_action.values()))


def _send_action_proofs(proofs: list[ProofSend]) -> None:
    """One action's proofs in one provider call, through the engine's sender: each
    variant's rendered for its profiles put in that variant's group."""
    first = proofs[0]
    action = first.action
    # An action with variants marks each proof with its label, A's too.
    marked = bool(action.variants.all())
    sender = action_sender(action=action, campaign=first.campaign)
    by_key = {-proof.pk: proof for proof in proofs}
    by_variant: dict[str, list[ProofSend]] = {}
    for proof in proofs:
        by_variant.setdefault(proof.variant, []).append(proof)
    try:
        outcomes = []
        messages = []
        for label, group in by_variant.items():
            # Variant A is the action's own content, which the sender renders with no group.
            sender.groups = {} if label == "A" else {p.profile_id: label for p in group}
            prepared = sender.prepare(
                [recipient_due(-proof.pk, profile_row(proof.profile)) for proof in group]
            )
            outcomes += prepared.outcomes
            messages += [
                (due, _proof_message(message, action.channel, label if marked else ""))
                for due, message in prepared.messages
            ]
        outcomes += sender.send(messages) if messages else []
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


def _proof_message(message: Any, channel: str, label: str = "") -> Any:
    """The message marked as a proof (of variant `label`, when its action has variants)."""
    if channel not in CHANNELS_WITH_SUBJECT:
        return message  # an SMS is its body alone: it goes as the recipients will get it
    prefix = PROOF_VARIANT_SUBJECT_PREFIX.format(label=label) if label else PROOF_SUBJECT_PREFIX
    return replace(message, subject=f"{prefix}{message.subject}")


def campaign_proof_sends(*, campaign: Campaign) -> QuerySet[ProofSend]:
    """The campaign's proof sends, newest first, with what a list shows of each."""
    return ProofSend.objects.filter(campaign=campaign).select_related(
        "version", "action", "profile", "requested_by"
    )


def proof_variant_labels(*, campaign: Campaign) -> list[str]:
    """The variants a proof of the campaign may choose among now: A and the labels of the
    variants of the version it would prove; [] when that version has none (two queries)."""
    try:
        version = preview_version(campaign=campaign)
    except ValidationError:
        return []
    labels = set(Variant.objects.filter(action__version=version).values_list("label", flat=True))
    return [label for label in VARIANT_LABELS if label == "A" or label in labels] if labels else []


def proof_actions_with_variants(sends: Sequence[ProofSend]) -> set[int]:
    """The actions among the proofs' that have variants, whose proofs a list names by
    variant (one query)."""
    return set(
        Variant.objects.filter(action_id__in={send.action_id for send in sends}).values_list(
            "action_id", flat=True
        )
    )


def proof_sends_pending(*, proof_ids: Sequence[int]) -> int:
    return ProofSend.objects.filter(pk__in=proof_ids, status=ProofStatus.PENDING).count()
