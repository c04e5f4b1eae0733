"""API-triggered campaigns: a call names its recipients, each with an optional context, and
every channel action of the running version goes to each of them at once.

``trigger_create`` is the one service every door calls (``POST …/trigger/``, ``manage.py
campaign trigger``). In ONE transaction it

1. refuses unless the campaign is API-triggered and may send (Live; 409 otherwise), under
   the campaign's send lock in share mode, so that a Stop waits for it and halts it;
2. checks every recipient before writing anything and refuses the whole call naming each
   bad one (``TriggerRefused``: index, external_id, field, why) — an unknown external_id
   with no profile data, profile data the profile services refuse (their checks and
   limits: ``segments.services.profile_data_apply``), a context that is not an object or
   is beyond the attributes' limits, an external_id named twice, more than
   SALVO_TRIGGER_MAX_RECIPIENTS recipients;
3. creates or updates the profiles given with data (the fields given only), then the
   ``Trigger`` and its own ``Execution`` of the running version, the recipients' contexts
   (``TriggerRecipient``) and one delivery row per (action, recipient), each by one
   INSERT … SELECT inside the database, with the counters;
4. hands the first batches to the workers when it commits (``window.execution_dispatch``),
   so the first message goes out at once. Consent, suppressions, caps and quiet hours are
   the engine's, at send time, as for any campaign.

Exactly once. The delivery rows are unique per (execution, action, profile), and a trigger
per (campaign, idempotency key): a repeated call with the same key returns the trigger the
first one made and writes nothing, even when two race (the second insert of the key waits
for the first transaction, then fails and reads the winner's trigger).

A trigger's execution completing does not complete the campaign (``completion``): it stays
Live, waiting for the next trigger, until stopped; ``campaign_stop`` halts the triggers'
running executions (``trigger_executions_halt``).

Rendering. Each chunk the engine sends reads its recipients' contexts in one query
(``delivery.sending``); content reads them as ``{{ context.<key> }}``. The preview and the
proofs of an API-triggered campaign render with an empty context (there is no trigger
call to take one from), so ``{{ context.order_id|default:"…" }}`` shows its default.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, transaction
from django.db.models import QuerySet, Sum
from django.utils import timezone

from config.permissions import require_perms
from segments.choices import ConsentSource, consent_field
from segments.models import PROFILE_DATA_FIELDS, Profile
from segments.services import profile_data_apply
from segments.validators import (
    AttributeLimits,
    JsonTooDeep,
    attributes_problem,
    check_json_nesting,
    external_id_problem,
)

from .choices import CampaignKind, DeliveryStatus, ExecutionStatus
from .delivery.sql import sending_version, table_name
from .delivery.window import execution_dispatch
from .exceptions import CampaignConflict
from .experiments import execution_assign
from .models import (
    Campaign,
    ChannelAction,
    Delivery,
    DeliveryCount,
    Execution,
    Trigger,
    TriggerRecipient,
)

D = DeliveryStatus

TRIGGER_PERMISSION = "campaigns.trigger_campaign"
RECIPIENT_KEYS = ("external_id", "profile", "context")
# What a recipient's `profile` may set: the profile's data but its key (the recipient's
# own external_id), and its consent as the profile API takes it.
PROFILE_INPUT_FIELDS = tuple(name for name in PROFILE_DATA_FIELDS if name != "external_id")
EXTERNAL_ID_MAX_LENGTH = Profile._meta.get_field("external_id").max_length or 255


def max_recipients() -> int:
    """The most recipients one trigger call may name (SALVO_TRIGGER_MAX_RECIPIENTS)."""
    return int(settings.SALVO_TRIGGER_MAX_RECIPIENTS)


@dataclass(frozen=True)
class RecipientProblem:
    """Why one recipient of a call is refused: `index` in the call (for a command, the
    line number instead), its external_id as given, the field at fault."""

    index: int
    external_id: str
    field: str
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "external_id": self.external_id,
            "field": self.field,
            "message": self.message,
        }

    def __str__(self) -> str:
        who = f" (external_id “{self.external_id}”)" if self.external_id else ""
        where = f".{self.field}" if self.field else ""
        return f"recipients[{self.index}]{who}{where}: {self.message}"


class TriggerRefused(ValidationError):
    """The call is refused whole (HTTP 400): `detail` says why, `problems` names each bad
    recipient. Nothing of it was written or sent."""

    def __init__(self, detail: str, problems: Sequence[RecipientProblem] = ()) -> None:
        self.detail = detail
        self.problems = list(problems)
        super().__init__([detail, *(str(p) for p in self.problems)], code="trigger_refused")


@dataclass(frozen=True)
class TriggerResult:
    """The trigger a call made, or found by its idempotency key (`created` False)."""

    trigger: Trigger
    created: bool


@dataclass
class _Recipient:
    index: int
    external_id: str
    profile: dict[str, Any] | None
    consent: dict[str, bool] | None
    context: dict[str, Any]


def _shown_id(value: Any) -> str:
    return value[:EXTERNAL_ID_MAX_LENGTH] if isinstance(value, str) else ""


def _read_recipient(
    index: int, item: Any, limits: AttributeLimits
) -> tuple[_Recipient | None, list[RecipientProblem]]:
    """One recipient as given, or its problems (every one found, not only the first)."""
    if not isinstance(item, dict):
        return None, [RecipientProblem(index, "", "", "A recipient must be a JSON object.")]
    shown = _shown_id(item.get("external_id"))
    problems: list[RecipientProblem] = []

    def problem(field: str, message: str) -> None:
        problems.append(RecipientProblem(index, shown, field, message))

    for key in sorted(set(item) - set(RECIPIENT_KEYS)):
        problem(key, f"Unknown key; a recipient has {', '.join(RECIPIENT_KEYS)}.")
    external_id = item.get("external_id")
    if not isinstance(external_id, str) or not external_id.strip():
        problem("external_id", "Give the recipient's external_id, a non-empty text.")
    elif len(external_id) > EXTERNAL_ID_MAX_LENGTH:
        problem("external_id", f"Longer than {EXTERNAL_ID_MAX_LENGTH} characters.")
    elif (why := external_id_problem(external_id)) is not None:
        problem("external_id", why)
    profile = item.get("profile")
    consent = None
    if profile is not None:
        if not isinstance(profile, dict):
            problem("profile", "Profile data must be a JSON object.")
            profile = None
        else:
            profile = dict(profile)
            consent = profile.pop("consent", None)
            if consent is not None and not isinstance(consent, dict):
                problem("profile.consent", "Consent must be an object of channel: true/false.")
                consent = None
            for name in sorted(set(profile) - set(PROFILE_INPUT_FIELDS)):
                why = (
                    "The recipient's external_id names the profile; it cannot change here."
                    if name == "external_id"
                    else "Unknown profile field."
                )
                problem(f"profile.{name}", why)
    context = item.get("context", {})
    if context is None:
        context = {}
    if not isinstance(context, dict):
        problem("context", "The context must be a JSON object.")
        context = {}
    else:
        why = attributes_problem(context, limits)
        if why is not None:
            # The attributes' checks and limits, said of the context.
            problem("context", why.replace("attributes", "context", 1))
    if problems:
        return None, problems
    return _Recipient(index, str(external_id), profile, consent, context), []


def _validation_problems(recipient: _Recipient, error: ValidationError) -> list[RecipientProblem]:
    if not hasattr(error, "error_dict"):
        return [
            RecipientProblem(recipient.index, recipient.external_id, "profile", message)
            for message in error.messages
        ]
    return [
        RecipientProblem(
            recipient.index,
            recipient.external_id,
            "profile" if field == "__all__" else f"profile.{field}",
            message,
        )
        for field, messages in error.message_dict.items()
        for message in messages
    ]


@dataclass
class _Checked:
    recipients: list[_Recipient]
    # Profiles to write (new or changed), and the ids of those named without data.
    created: list[Profile]
    updated: list[Profile]
    update_fields: set[str]


def _check_recipients(recipients: Any, *, lock: bool) -> _Checked:
    """Every recipient read and checked, the profiles to create or update prepared (not
    saved); raises ``TriggerRefused`` naming every bad recipient."""
    if not isinstance(recipients, list):
        raise TriggerRefused("“recipients” must be a list of recipients.")
    if not recipients:
        raise TriggerRefused("Name at least one recipient.")
    most = max_recipients()
    if len(recipients) > most:
        raise TriggerRefused(
            f"{len(recipients):,} recipients in one call; the limit is {most:,} "
            "(SALVO_TRIGGER_MAX_RECIPIENTS): split the call."
        )
    limits = AttributeLimits.from_settings()
    problems: list[RecipientProblem] = []
    read: list[_Recipient] = []
    first_at: dict[str, int] = {}
    for index, item in enumerate(recipients):
        recipient, found = _read_recipient(index, item, limits)
        problems.extend(found)
        if recipient is None:
            continue
        if recipient.external_id in first_at:
            first = first_at[recipient.external_id]
            problems.append(
                RecipientProblem(
                    index,
                    recipient.external_id,
                    "external_id",
                    f"Named twice in one call (first at recipients[{first}]).",
                )
            )
            continue
        first_at[recipient.external_id] = index
        read.append(recipient)
    # The profiles given data, whole (locked until the call commits, in the transaction),
    # and the ids of those named without.
    with_data = Profile.objects.filter(
        external_id__in=[r.external_id for r in read if r.profile is not None]
    )
    if lock:
        with_data = with_data.select_for_update()
    stored = {p.external_id: p for p in with_data}
    named = set(
        Profile.objects.filter(
            external_id__in=[r.external_id for r in read if r.profile is None]
        ).values_list("external_id", flat=True)
    )
    checked = _Checked(read, [], [], set())
    now = timezone.now()
    for recipient in read:
        if recipient.profile is None:
            if recipient.external_id not in named:
                problems.append(
                    RecipientProblem(
                        recipient.index,
                        recipient.external_id,
                        "external_id",
                        "No profile has this external_id; give “profile” data to create it.",
                    )
                )
            continue
        profile = stored.get(recipient.external_id)
        new = profile is None
        if profile is None:
            profile = Profile(external_id=recipient.external_id)
        try:
            profile_data_apply(
                profile,
                data=recipient.profile,
                consent=recipient.consent,
                source=ConsentSource.API,
            )
        except ValidationError as error:
            problems.extend(_validation_problems(recipient, error))
            continue
        if new:
            checked.created.append(profile)
        elif recipient.profile or recipient.consent:
            profile.updated_at = now
            checked.updated.append(profile)
            checked.update_fields.update(recipient.profile)
            for channel in recipient.consent or {}:
                field = consent_field(channel)
                checked.update_fields.update({field, f"{field}_changed_at", f"{field}_source"})
    if problems:
        problems.sort(key=lambda p: p.index)
        raise TriggerRefused(
            f"{len({p.index for p in problems}):,} of {len(recipients):,} recipients are "
            "refused; nothing was sent.",
            problems,
        )
    return checked


def trigger_recipient_problems(recipients: Any) -> list[RecipientProblem]:
    """What ``trigger_create`` would refuse in these recipients, without writing anything
    (the problems of a call refused whole with no recipient named are left out)."""
    try:
        _check_recipients(recipients, lock=False)
    except TriggerRefused as refused:
        return refused.problems
    return []


@dataclass
class TriggerFile:
    """The recipients of a JSON-lines file (``manage.py campaign trigger``): one JSON
    object per line, blank lines skipped; `lines` holds each recipient's line number and
    `unreadable` the lines that are not JSON; `digest` (the file's SHA-256) is the
    default idempotency key, so the same file never sends twice."""

    items: list[Any]
    lines: list[int]
    unreadable: list[tuple[int, str]]
    digest: str

    def refusal_text(self, problems: Sequence[RecipientProblem]) -> str:
        """Every bad line, by its number, in one line of text."""
        found = [(line, why) for line, why in self.unreadable]
        for problem in problems:
            who = f" (external_id “{problem.external_id}”)" if problem.external_id else ""
            field = f" {problem.field}:" if problem.field else ""
            found.append((self.lines[problem.index], f"{who}{field} {problem.message}".strip()))
        found.sort(key=lambda item: item[0])
        listed = "; ".join(f"line {line}: {why}" for line, why in found)
        return f"{len(found):,} bad lines, nothing sent: {listed}".replace("\n", " ")


def trigger_file_read(path: str) -> TriggerFile:
    """Read a JSON-lines file of recipients; raises ``ValidationError`` when the file
    cannot be read at all (missing, not UTF-8, more lines than a call may hold)."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise ValidationError(f"Cannot read {path}: {error.strerror or error}.") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValidationError(f"{path} is not UTF-8 text (byte {error.start}).") from None
    items: list[Any] = []
    lines: list[int] = []
    unreadable: list[tuple[int, str]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if len(lines) + len(unreadable) >= max_recipients():
            raise ValidationError(
                f"{path} holds more than {max_recipients():,} recipients "
                "(SALVO_TRIGGER_MAX_RECIPIENTS): split it."
            )
        try:
            check_json_nesting(line)
            items.append(json.loads(line))
            lines.append(number)
        except (JsonTooDeep, ValueError) as error:
            unreadable.append((number, f"not a JSON object ({error})"))
    return TriggerFile(items, lines, unreadable, hashlib.sha256(data).hexdigest())


def _refuse_unless_triggerable(campaign: Campaign) -> None:
    if campaign.kind != CampaignKind.API_TRIGGERED:
        raise CampaignConflict(
            f"Campaign “{campaign.name}” is {campaign.get_kind_display()}, not API-triggered: "
            "only an API-triggered campaign can be triggered."
        )


def trigger_create(
    *, campaign: Campaign, user: Any, recipients: Any, idempotency_key: str
) -> TriggerResult:
    """Trigger the Live API-triggered `campaign` for `recipients` (``[{"external_id",
    "profile": {…}, "context": {…}}]``), once per `idempotency_key`.

    Raises ``PermissionDenied`` (403), ``CampaignConflict`` (409: not API-triggered, not
    Live), ``TriggerRefused`` (400: bad recipients, nothing written) or ``ValidationError``
    (400: a bad key). A key already used returns its trigger, ``created=False``."""
    require_perms(user, TRIGGER_PERMISSION, to="trigger a campaign")
    key = idempotency_key.strip() if isinstance(idempotency_key, str) else ""
    if not key:
        raise ValidationError({"idempotency_key": "Give an idempotency key (any text)."})
    if len(key) > 255:
        raise ValidationError({"idempotency_key": "At most 255 characters."})
    _refuse_unless_triggerable(campaign)
    found = Trigger.objects.filter(campaign=campaign, idempotency_key=key).first()
    if found is not None:
        return TriggerResult(found, created=False)
    if isinstance(recipients, list) and any(
        isinstance(item, dict) and item.get("profile") is not None for item in recipients
    ):
        require_perms(
            user,
            "segments.add_profile",
            "segments.change_profile",
            to="create or update profiles by a trigger",
        )
    try:
        return _trigger_write(campaign=campaign, user=user, recipients=recipients, key=key)
    except IntegrityError:
        # Another call created a profile this one creates, or used the key, meanwhile:
        # once more, now that it has committed (the key then returns its trigger).
        found = Trigger.objects.filter(campaign=campaign, idempotency_key=key).first()
        if found is not None:
            return TriggerResult(found, created=False)
        return _trigger_write(campaign=campaign, user=user, recipients=recipients, key=key)


@transaction.atomic
def _trigger_write(*, campaign: Campaign, user: Any, recipients: Any, key: str) -> TriggerResult:
    # Share mode of the send lock: a Stop waits for this call, then halts its execution.
    version_id = sending_version(campaign.pk, hold=True)
    campaign = Campaign.objects.get(pk=campaign.pk)
    if version_id is None:
        raise CampaignConflict(
            f"Campaign “{campaign.name}” is {campaign.get_status_display()}: only a Live "
            "API-triggered campaign can be triggered."
        )
    now = timezone.now()
    execution = Execution.objects.create(
        campaign=campaign,
        version_id=version_id,
        # No scheduled moment: the trigger says when it came. (A moment would also have
        # to be unique per campaign, as a recurring campaign's occurrences are.)
        scheduled_for=None,
        planning_done=True,
        last_progress_at=now,
    )
    try:
        with transaction.atomic():
            trigger = Trigger.objects.create(
                campaign=campaign,
                execution=execution,
                idempotency_key=key,
                created_by=user if getattr(user, "pk", None) else None,
            )
    except IntegrityError:
        # Another call with the key committed first (its insert held this one's until
        # then): its trigger, and nothing of this call (the execution made above goes).
        found = Trigger.objects.filter(campaign=campaign, idempotency_key=key).first()
        transaction.set_rollback(True)
        if found is None:
            raise
        return TriggerResult(found, created=False)
    checked = _check_recipients(recipients, lock=True)
    if checked.created:
        Profile.objects.bulk_create(checked.created)
    if checked.updated:
        Profile.objects.bulk_update(
            checked.updated, sorted(checked.update_fields | {"updated_at"}), batch_size=1000
        )
    ids = dict(
        Profile.objects.filter(
            external_id__in=[r.external_id for r in checked.recipients]
        ).values_list("external_id", "pk")
    )
    rows: list[tuple[int, dict[str, Any]]] = [
        (ids[r.external_id], r.context) for r in checked.recipients
    ]
    _insert_recipients(execution, rows)
    per_action = _insert_deliveries(execution)
    execution_assign(execution, [profile_id for profile_id, _ in rows])
    size = len(rows)
    execution.audience_size = size
    execution.audience_max_profile_id = max(row[0] for row in rows)
    execution.planned_through = execution.audience_max_profile_id
    execution.save(update_fields=["audience_size", "audience_max_profile_id", "planned_through"])
    trigger.recipients = size
    trigger.save(update_fields=["recipients"])
    DeliveryCount.objects.bulk_create(
        DeliveryCount(
            execution=execution,
            action_id=action_id,
            version_id=version_id,
            status=status,
            count=per_action[action_id] if status == D.PENDING else 0,
        )
        for action_id in ChannelAction.objects.filter(version_id=version_id).values_list(
            "pk", flat=True
        )
        for status in DeliveryStatus.values
    )
    # The first batches go to the workers as this transaction commits.
    execution_dispatch(execution_id=execution.pk)
    return TriggerResult(trigger, created=True)


def _insert_recipients(execution: Execution, rows: Sequence[tuple[int, dict[str, Any]]]) -> None:
    """The recipients' contexts, from one JSON parameter, in one INSERT … SELECT."""
    document = json.dumps(rows, separators=(",", ":"), ensure_ascii=False)
    table = table_name(TriggerRecipient)
    if connection.vendor == "postgresql":
        source = "SELECT %s, (e->>0)::bigint, e->1 FROM jsonb_array_elements(%s::jsonb) AS e"
    else:
        source = "SELECT %s, value->>0, json(value->1) FROM json_each(%s)"
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (execution_id, profile_id, context) {source}",
            [execution.pk, document],
        )


def _insert_deliveries(execution: Execution) -> Counter[int]:
    """One pending row per (action of the version, recipient of the trigger), in one
    INSERT … SELECT; how many rows each action got."""
    sql = (
        f"INSERT INTO {table_name(Delivery)} "
        "(execution_id, action_id, profile_id, status, attempts, provider_message_id, error, "
        "reason) "
        f"SELECT %s, a.id, r.profile_id, %s, 0, '', '', '' "
        f"FROM {table_name(TriggerRecipient)} r CROSS JOIN {table_name(ChannelAction)} a "
        "WHERE r.execution_id = %s AND a.version_id = %s "
        "ON CONFLICT DO NOTHING RETURNING action_id"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [execution.pk, D.PENDING, execution.pk, execution.version_id])
        return Counter(int(action_id) for (action_id,) in cursor.fetchall())


# --- reads --------------------------------------------------------------------------------


def trigger_executions_halt(*, campaign: Campaign) -> int:
    """Halt the running executions of the campaign's triggers (``campaign_stop``, inside
    its transaction): nothing more of them is sent. Returns how many."""
    return Execution.objects.filter(
        campaign=campaign, status=ExecutionStatus.RUNNING, trigger__isnull=False
    ).update(status=ExecutionStatus.HALTED, finished_at=timezone.now())


def campaign_triggers(*, campaign: Campaign) -> QuerySet[Trigger]:
    """The campaign's triggers, newest first, with their executions."""
    return Trigger.objects.filter(campaign=campaign).select_related("execution", "created_by")


def trigger_counts(*, triggers: Sequence[Trigger]) -> dict[int, dict[str, Any]]:
    """Each trigger's delivery counts, by trigger id, in one query: ``{"total",
    "by_status": {status: n}, "by_channel": {channel: {status: n}}}``."""
    by_execution = {trigger.execution_id: trigger.pk for trigger in triggers}
    counts: dict[int, dict[str, Any]] = {
        trigger.pk: {
            "total": 0,
            "by_status": dict.fromkeys(DeliveryStatus.values, 0),
            "by_channel": {},
        }
        for trigger in triggers
    }
    rows = (
        DeliveryCount.objects.filter(execution_id__in=list(by_execution))
        .values("execution_id", "action__channel", "status")
        .annotate(n=Sum("count"))
        .order_by("execution_id", "action__channel", "status")
    )
    for row in rows:
        figures = counts[by_execution[row["execution_id"]]]
        n = int(row["n"] or 0)
        channel = figures["by_channel"].setdefault(
            row["action__channel"], dict.fromkeys(DeliveryStatus.values, 0)
        )
        channel[row["status"]] += n
        figures["by_status"][row["status"]] += n
        figures["total"] += n
    return counts
