"""Sending a batch: a chunk at a time, each chunk's recipients decided, rendered, handed
to the provider in one call, and recorded.

``batch_send`` takes the chunk's due rows together with their recipients' data (one
query, ``sql.due_lock`` or ``sql.due_claim``), skips the ineligible (``policy``), renders
(templates compiled once per batch), hands the whole chunk to the preset's backend in one
``send_batch`` call (one bulk request for providers that have a bulk API), then records
every outcome with one UPDATE and moves the per-status counters (``DeliveryCount``). On
PostgreSQL several threads send chunks of one batch side by side.

However the database holds a chunk's rows (``sql``), the rows a killed worker was sending
may have reached the provider before it died: the delivery id goes with every message as
its idempotency key so that the provider can drop the repeat.

Failures. Whatever goes wrong while preparing one recipient (reading its data, building
its context, rendering, building headers) fails that recipient only, with the reason on
its row.

Versions. A batch's action names a channel of the execution; the content comes from the
campaign's running version's action of that channel, checked again by every chunk just
before its provider call (``ActionSender``). Activating a new version while Live takes the
send lock as Stop does (``sql``), so from its commit every chunk sends the new content; a
channel the new version removed is skipped (``channel_removed``). Each row records the
version it was decided with, and the counters (``DeliveryCount``, per action, version,
status and reason; ``DeliveryTimeline``, per 5-second bucket) move in the chunk's own
transaction, last.

Stop. Once ``campaign_stop`` has committed, no chunk starts sending (how: ``sql``).

The preview and the proofs decide, render and send through the same ``ActionSender``
(``action_sender``, ``recipient_due``), so what they show is what a worker sends.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from django.conf import settings
from django.db import close_old_connections, connection, transaction
from django.utils import timezone

from channels import ratelimit
from channels.choices import ChannelKind
from channels.providers import (
    OutboundMessage,
    PermanentProviderError,
    ProviderBackend,
    ProviderError,
    SendResult,
    TransientProviderError,
    backend_path,
    get_backend,
)
from channels.rendering import RenderError, content_renderer, html_renderer, profile_context
from channels.rendering.renderers import ContentRenderer
from channels.suppression import suppressed_addresses
from config.graceful_stop import stop_requested
from segments.choices import ConsentChannel
from segments.unsubscribe import unsubscribe_links

from ..choices import (
    HOLDOUT_GROUP,
    REST_GROUP,
    CampaignKind,
    CampaignType,
    DeliveryReason,
    DeliveryStatus,
    EventKind,
    ExecutionStatus,
)
from ..events import ProviderEvent, events_record
from ..experiments import (
    VariantRenderers,
    campaign_has_assignments,
    experiment_decide,
    experiment_groups,
)
from ..models import Campaign, CampaignVersion, ChannelAction, Execution, TriggerRecipient
from ..tracking import message_tracker
from .caps import CapCheck
from .completion import execution_halt
from .policy import (
    Batch,
    DeliveryOutcome,
    Due,
    RetryPolicy,
    provider_answer_outcome,
    recipient_address,
    recipient_rule,
    recipient_skip,
    render_error_text,
)
from .sql import (
    CountKey,
    campaign_sending,
    claim_release,
    claim_renew,
    counts_add,
    due_claim,
    due_lock,
    on_postgres,
    outcomes_record,
    sending_version,
    timeline_add,
)
from .timing import QuietHoursRule, quiet_hours_hold, quiet_hours_rule
from .window import range_wait

logger = logging.getLogger(__name__)

D = DeliveryStatus
R = DeliveryReason


def _status_changes(
    action: ChannelAction, outcomes: Sequence[DeliveryOutcome], *, version_id: int
) -> Counter[CountKey]:
    """How the recorded outcomes move the action's counters: out of pending (counted under
    the action's own version), into their status, decided with `version_id`, for their
    reason."""
    changes: Counter[CountKey] = Counter()
    for outcome in outcomes:
        if outcome.status != D.PENDING:
            changes[(action.pk, version_id, outcome.status, outcome.reason)] += 1
            changes[(action.pk, action.version_id, D.PENDING, "")] -= 1
    return changes


def _record_counts(
    execution_id: int,
    action: ChannelAction,
    outcomes: Sequence[DeliveryOutcome],
    *,
    version_id: int,
    now: dt.datetime,
) -> None:
    """Move the counters and the timeline by the recorded outcomes: the last statements of
    the chunk's transaction."""
    counts_add(execution_id, _status_changes(action, outcomes, version_id=version_id))
    timeline_add(execution_id, action.pk, outcomes, now=now)


@dataclass
class Prepared:
    messages: list[tuple[Due, OutboundMessage]]
    outcomes: list[DeliveryOutcome]  # recipients decided without sending: skipped or failed


def _delivery_policy() -> RetryPolicy:
    return RetryPolicy(
        max_attempts=settings.SALVO_DELIVERY_MAX_ATTEMPTS,
        base_s=settings.SALVO_DELIVERY_RETRY_BASE_S,
        cap_s=settings.SALVO_DELIVERY_RETRY_CAP_S,
    )


def action_sender(*, action: ChannelAction, campaign: Campaign) -> ActionSender:
    """The engine's sender for one action's own content, outside any execution: the
    preview shows, and the proofs send, what a worker would. Close it when done.

    Untracked: their messages are no deliveries that an open or a click could count for."""
    sender = ActionSender(action=action, campaign=campaign, version_id=action.version_id)
    sender.tracker = None
    return sender


def recipient_due(key: int, profile: Mapping[str, Any]) -> Due:
    """One recipient for `ActionSender.prepare` outside any execution: a first attempt,
    told apart by `key` (its outcome's ``delivery_id``); `profile` holds
    ``PROFILE_VALUES``."""
    return Due(key, 1, dict(profile))


class ActionSender:
    """Sends the chunks of one action's batch: what every recipient shares is worked out
    once, and the provider's connection stays open across the chunks.

    The batch's action names the channel (and the counters) within the execution; the
    content, and the preset, are those of the campaign's running version's action of that
    channel (``use_version``): a version activated while the execution sends applies to
    every delivery not sent yet. Each chunk checks the running version once more just
    before the provider call (under the send lock on PostgreSQL) and renders again if it
    changed, so no delivery goes out with an older version's content once the activation
    has committed."""

    def __init__(self, *, action: ChannelAction, campaign: Campaign, version_id: int) -> None:
        self.action = action
        self.campaign = campaign
        self.preset = action.preset
        channel = action.channel
        self.channel = channel
        self.label = action.get_channel_display()
        self.marketing = campaign.type == CampaignType.MARKETING
        self.rule = recipient_rule(channel, campaign_type=campaign.type)
        # What a skipped row says, by its reason (``policy.recipient_skip``).
        self.skip_texts: dict[str, str] = {
            R.PROFILE_DELETED: "The profile no longer exists.",
            R.OPTED_OUT: f"Opted out of {self.label} marketing.",
            R.NO_ADDRESS: f"No {self.label} address.",
            R.SUPPRESSED: f"The {self.label} address is on the suppression list.",
            R.HOLDOUT: "In the experiment's holdout: no message of this campaign.",
        }
        # The chunk's addresses on the suppression list, read by ``send_chunk`` before it
        # prepares (the preview and the proofs check none: a proof goes where it is asked).
        self.suppressed: frozenset[str] = frozenset()
        # Experiments (campaigns.experiments): each chunk's recipients' groups, read by the
        # workers' chunks only (the preview and the proofs show the action's own content).
        self.experiment = False
        self.groups: dict[int, str] = {}
        self.variants: VariantRenderers | None = None  # the version's, once a group needs them
        self._winner: str | None = None
        self.backend: ProviderBackend | None = None
        self.policy = _delivery_policy()
        # API triggers: each chunk's recipients' contexts (``campaigns.triggers``); empty
        # outside an execution (the preview, the proofs).
        self.triggered = campaign.kind == CampaignKind.API_TRIGGERED
        self.contexts: dict[int, Any] = {}
        self.version_id = 0
        self.content: ChannelAction | None = None
        self.removed = ""
        self._quiet_hours: tuple[int, QuietHoursRule | None] = (0, None)
        # Own open and click tracking (campaigns.tracking): a campaign's switches, the same
        # for every version.
        self.tracker = message_tracker(campaign, channel=channel)
        self.use_version(version_id)
        self.caps = CapCheck(channel=channel, campaign=campaign)  # frequency caps

    def use_version(self, version_id: int) -> None:
        """Send the content of this version's action of the channel from now on. When the
        version has none (it removed the channel), the rows left are skipped with the
        reason ``channel_removed``: what a version does not send is not sent."""
        if version_id == self.version_id:
            return
        if version_id == self.action.version_id:
            content: ChannelAction | None = self.action
        else:
            content = (
                ChannelAction.objects.select_related("preset")
                .filter(version_id=version_id, channel=self.channel)
                .first()
            )
        self.version_id = version_id
        self.content = content
        if content is None:
            number = CampaignVersion.objects.filter(pk=version_id).values_list("number", flat=True)
            self.removed = f"Version {next(iter(number), '?')} has no {self.label} action."
            return
        if self.backend is not None and content.preset_id != self.preset.pk:
            self.close()  # the next send opens the new preset's backend
        self.preset = content.preset
        self.render = content_renderer(
            subject=content.subject, body=content.body, trigger_context=self.triggered
        )
        # An email's HTML part (optional).
        self.render_html = html_renderer(
            html_body=content.html_body, trigger_context=self.triggered
        )
        self.variants = None
        self.unsubscribe = (
            self.preset.reply_to or self.preset.from_email
            if self.marketing and self.channel == ChannelKind.EMAIL
            else None
        )
        self.unsubscribe_link = unsubscribe_links() if self.unsubscribe else None

    def quiet_hours(self) -> QuietHoursRule | None:
        """The running version's quiet hours (``timing``), read once per version."""
        if self._quiet_hours[0] != self.version_id:
            rule = quiet_hours_rule(
                campaign_type=self.campaign.type, version_id=self.version_id, preset=self.preset
            )
            self._quiet_hours = (self.version_id, rule)
        return self._quiet_hours[1]

    def close(self) -> None:
        if self.backend is not None:
            self.backend.close()
            self.backend = None

    def _unsubscribe_headers(self, profile: Mapping[str, Any]) -> dict[str, str]:
        """A marketing email's ``List-Unsubscribe``: the one-click link (RFC 8058) when
        Salvo is reachable from the internet, and a mailto to the preset's reply address."""
        # Percent-encoded (RFC 6068): an id must not end the URI or the header.
        subject = quote(f"unsubscribe {profile['external_id']}", safe="")
        mailto = f"<mailto:{self.unsubscribe}?subject={subject}>"
        if self.unsubscribe_link is None:
            return {"List-Unsubscribe": mailto}
        url = self.unsubscribe_link(profile["id"], profile["external_id"], ConsentChannel.EMAIL)
        return {
            "List-Unsubscribe": f"<{url}>, {mailto}",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        }

    def prepare(self, due: Sequence[Due]) -> Prepared:
        """Decide each row: skipped (no address, opted out), failed (its data cannot be
        read, its content cannot be rendered, or anything else goes wrong for it alone) or
        a rendered message."""
        prepared = Prepared([], [])
        if self.content is None:
            prepared.outcomes = [
                DeliveryOutcome(row.delivery_id, D.SKIPPED, self.removed, reason=R.CHANNEL_REMOVED)
                for row in due
            ]
            return prepared
        for row in due:
            try:
                decided = self._prepare_one(row)
            except RenderError as error:
                text = render_error_text(error)
                decided = DeliveryOutcome(row.delivery_id, D.FAILED, text, reason=R.RENDER_ERROR)
            except Exception as error:  # this recipient's failure, never the batch's
                text = f"Cannot prepare the message: {type(error).__name__}: {error}"
                logger.warning("Delivery %s failed: %s", row.delivery_id, text)
                decided = DeliveryOutcome(row.delivery_id, D.FAILED, text, reason=R.PREPARE_ERROR)
            if isinstance(decided, DeliveryOutcome):
                prepared.outcomes.append(decided)
            else:
                prepared.messages.append((row, decided))
        return prepared

    def renderers(self, group: str | None) -> tuple[ContentRenderer, Callable[..., str]]:
        """The renderers of `group`'s content (subject and text, then HTML): its variant's,
        or the action's own (no group, or an action without that group's variant)."""
        if group is not None and self.variants is None and self.content is not None:
            self.variants = VariantRenderers.of(self.content, trigger_context=self.triggered)
        if not self.variants:
            return self.render, self.render_html
        # The group's variant: its subject, text and HTML part.
        return (
            self.variants.renderer(group, self.render),
            self.variants.html_renderer(group, self.render_html),
        )

    def _prepare_one(self, row: Due) -> DeliveryOutcome | OutboundMessage:
        profile = row.profile
        webhook_url = self.preset.webhook_url
        skip = recipient_skip(profile, rule=self.rule, webhook_url=webhook_url)
        if skip:
            return DeliveryOutcome(row.delivery_id, D.SKIPPED, self.skip_texts[skip], reason=skip)
        assert profile is not None  # recipient_skip skips a deleted profile
        address = recipient_address(profile, rule=self.rule, webhook_url=webhook_url)
        if address in self.suppressed:
            text = self.skip_texts[R.SUPPRESSED]
            return DeliveryOutcome(row.delivery_id, D.SKIPPED, text, reason=R.SUPPRESSED)
        attributes = profile["attributes"]
        if isinstance(attributes, str):
            try:
                profile = {**profile, "attributes": json.loads(attributes)}
            except (ValueError, RecursionError) as error:
                text = f"Cannot read the profile's attributes: {type(error).__name__}: {error}"
                return DeliveryOutcome(row.delivery_id, D.FAILED, text, reason=R.BAD_PROFILE_DATA)
        group = self.groups.get(profile["id"])
        if group == HOLDOUT_GROUP:
            return DeliveryOutcome(
                row.delivery_id, D.SKIPPED, self.skip_texts[R.HOLDOUT], reason=R.HOLDOUT
            )
        if group == REST_GROUP:  # "test, then send the winner": the rest gets the winner
            group = self.winner()
        render, render_html = self.renderers(group)
        trigger = self.contexts.get(profile["id"], {}) if self.triggered else None
        data = profile_context(profile)
        subject, body = render(data, trigger)
        html_body = render_html(data, trigger)
        if self.tracker is not None:
            body, html_body = self.tracker.track(row.delivery_id, body, html_body)
        headers: dict[str, str] = {}
        if self.unsubscribe:
            headers.update(self._unsubscribe_headers(profile))
        payload: dict[str, Any] = {}
        if self.channel == ChannelKind.WEBHOOK:
            payload = {"external_id": profile["external_id"], "campaign": self.campaign.pk}
        return OutboundMessage(
            delivery_id=row.delivery_id,
            channel=self.channel,
            to=str(address),
            subject=subject,
            body=body,
            html_body=html_body,
            headers=headers,
            payload=payload,
        )

    def _suppressed(self, due: Sequence[Due]) -> frozenset[str]:
        """The chunk's addresses on the channel's suppression list: one query per chunk.
        A transactional campaign skips only the addresses that cannot be reached."""
        if self.rule.address is None:
            return frozenset()
        return suppressed_addresses(
            channel=self.channel,
            addresses=[
                str(self.rule.address_of(row.profile) or "")
                for row in due
                if row.profile is not None
            ],
            marketing=self.marketing,
        )

    def send(self, messages: Sequence[tuple[Due, OutboundMessage]]) -> list[DeliveryOutcome]:
        """Hand the messages to the provider in one call; every message's outcome."""
        answers: Sequence[SendResult | ProviderError]
        try:
            if self.backend is None:
                backend = get_backend(self.preset)
                backend.open()
                self.backend = backend
            answers = self.backend.send_batch([message for _, message in messages])
            if len(answers) != len(messages):
                raise ValueError(f"{len(answers)} outcomes for {len(messages)} messages")
        except TransientProviderError as error:  # the provider cannot be reached
            answers = [error] * len(messages)
        except Exception as error:  # a backend bug must not strand the chunk
            logger.exception("Provider backend failed on a chunk of %d messages", len(messages))
            answers = [TransientProviderError(f"{type(error).__name__}: {error}")] * len(messages)
        now = timezone.now()
        self._record_refusals(messages, answers, now=now)
        outcomes = []
        for (row, _), answer in zip(messages, answers, strict=True):
            decided = provider_answer_outcome(
                answer, attempt=row.attempt, now=now, policy=self.policy
            )
            outcomes.append(
                DeliveryOutcome(
                    row.delivery_id,
                    decided.status,
                    decided.text,
                    decided.next_attempt_at,
                    decided.reason,
                )
            )
        return outcomes

    def _record_refusals(
        self,
        messages: Sequence[tuple[Due, OutboundMessage]],
        answers: Sequence[SendResult | ProviderError],
        *,
        now: dt.datetime,
    ) -> None:
        """A refusal that says something of the address (``PermanentProviderError.suppress``:
        a number that does not exist, a token no app holds) is a ``rejected`` event of the
        delivery, which puts the address on the suppression list for the next campaigns."""
        provider = (self.backend and self.backend.provider) or backend_path(self.preset)
        events = [
            ProviderEvent(
                provider=provider,
                event_id=f"refused:{message.delivery_id}",
                kind=EventKind.REJECTED,
                channel=message.channel,
                occurred_at=now,
                delivery_id=message.delivery_id,
                recipient=message.to,
                detail=answer.reason,
                suppress=answer.suppress,
            )
            for (_, message), answer in zip(messages, answers, strict=True)
            if isinstance(answer, PermanentProviderError) and answer.suppress
        ]
        if events:
            events_record(events=events)

    def send_chunk(self, batch: Batch, *, limit: int) -> bool | None:
        """Send the next chunk of the batch and record its outcomes and counts. Returns
        whether more of the batch may be due now, or None (nothing sent) once the
        campaign is stopped."""
        if on_postgres():
            return self._send_locked_chunk(batch, limit=limit)
        return self._send_claimed_chunk(batch, limit=limit)

    def _send_locked_chunk(self, batch: Batch, *, limit: int) -> bool | None:
        """PostgreSQL: lock the chunk's due rows, render, send, record, all in one
        transaction. From the campaign check on (after rendering) the transaction holds
        the campaign's send lock in share mode: a stop, or the activation of a new
        version, waits for the provider call, and once it has committed no chunk sends
        with the old state (a chunk rendered with the old version renders again, under
        the lock: once per chunk in flight per activation)."""
        with transaction.atomic():
            due = due_lock(batch, limit=limit, now=timezone.now())
            if not due:
                return False
            self._read_contexts(batch, due)
            go = quiet_hours_hold(
                due,
                execution_id=batch.execution_id,
                rule=self.quiet_hours(),
                now=timezone.now(),
            )
            sendable, capped = self.caps.reserve(go, now=timezone.now())
            self.suppressed = self._suppressed(sendable)
            prepared = self.prepare(sendable)
            version_id = sending_version(self.campaign.pk, hold=True)
            if version_id is None:
                self.caps.forget([row.delivery_id for row in sendable])
                return None
            if version_id != self.version_id:
                self.use_version(version_id)
                prepared = self.prepare(sendable)
            outcomes = capped + prepared.outcomes
            if prepared.messages:
                outcomes += self.send(prepared.messages)
            now = timezone.now()
            outcomes_record(
                outcomes, execution_id=batch.execution_id, now=now, version_id=self.version_id
            )
            self.caps.release(outcomes)
            _record_counts(
                batch.execution_id, self.action, outcomes, version_id=self.version_id, now=now
            )
        return self._more_due(due, outcomes, limit=limit)

    def _send_claimed_chunk(self, batch: Batch, *, limit: int) -> bool | None:
        """SQLite: claim the chunk's due rows in a short transaction that checks the
        campaign; render with no transaction open; check the campaign and its running
        version again and renew the claim just before the provider call (rendering again
        first if a new version went Live meanwhile); record the outcomes of the rows still
        claimed in a last short transaction. Nothing holds the write lock while the chunk
        renders or waits for the provider."""
        claim = uuid.uuid4()
        with transaction.atomic():
            version_id = sending_version(self.campaign.pk)
            if version_id is None:
                return None
            due = due_claim(batch, limit=limit, now=timezone.now(), claim=claim)
        if not due:
            return False
        self.use_version(version_id)
        self._read_contexts(batch, due)
        # Rows in their quiet hours wait (and count towards no cap); the others are
        # reserved under the caps in one write transaction, which SQLite runs one at a time.
        with transaction.atomic():
            go = quiet_hours_hold(
                due,
                execution_id=batch.execution_id,
                rule=self.quiet_hours(),
                now=timezone.now(),
                claim=claim,
            )
            sendable, capped = self.caps.reserve(go, now=timezone.now())
        self.suppressed = self._suppressed(sendable)
        prepared = self.prepare(sendable)
        held: set[int] = set()
        while prepared.messages:
            with transaction.atomic():
                version_id = sending_version(self.campaign.pk)
                if version_id is None:
                    claim_release([row.delivery_id for row in due], claim=claim)
                    self.caps.forget([row.delivery_id for row in due])
                    return None
                if version_id == self.version_id:
                    held = claim_renew(
                        [row.delivery_id for row, _ in prepared.messages],
                        claim=claim,
                        now=timezone.now(),
                    )
                    break
            self.use_version(version_id)
            prepared = self.prepare(sendable)
        outcomes = capped + prepared.outcomes
        messages = [(row, m) for row, m in prepared.messages if row.delivery_id in held]
        if messages:
            outcomes += self.send(messages)
        with transaction.atomic():
            now = timezone.now()
            recorded = outcomes_record(
                outcomes,
                execution_id=batch.execution_id,
                now=now,
                version_id=self.version_id,
                claim=claim,
            )
            outcomes = [o for o in outcomes if o.delivery_id in recorded]
            self.caps.release(outcomes)
            _record_counts(
                batch.execution_id, self.action, outcomes, version_id=self.version_id, now=now
            )
        return self._more_due(due, outcomes, limit=limit)

    def winner(self) -> str:
        """The experiment's winner, decided once (by the scheduler's tick when the test
        ends, or here if a chunk reaches the rest first) and read once per batch."""
        if self._winner is None:
            self._winner = experiment_decide(campaign_id=self.campaign.pk).group
        return self._winner

    def _read_contexts(self, batch: Batch, due: Sequence[Due]) -> None:
        """An API trigger's chunk: its recipients' contexts (``campaigns.triggers``), in one
        query that the unique index on (execution, profile) serves; and an experiment's
        chunk: its recipients' groups, in one query likewise."""
        if self.experiment:
            ids = [row.profile["id"] for row in due if row.profile is not None]
            self.groups = experiment_groups(self.campaign.pk, ids)
        if self.triggered:
            ids = [row.profile["id"] for row in due if row.profile is not None]
            self.contexts = dict(
                TriggerRecipient.objects.filter(
                    execution_id=batch.execution_id, profile_id__in=ids
                ).values_list("profile_id", "context")
            )

    @staticmethod
    def _more_due(due: Sequence[Due], outcomes: Sequence[DeliveryOutcome], *, limit: int) -> bool:
        """A short chunk took everything due, unless some retry is due already."""
        now = timezone.now()
        return len(due) == limit or any(
            o.next_attempt_at is not None and o.next_attempt_at <= now for o in outcomes
        )


_send_pool: ThreadPoolExecutor | None = None


def _sending_threads() -> ThreadPoolExecutor:
    """The process's sending threads, started on first use (so in each worker process,
    after the fork), each with its own database connection."""
    global _send_pool
    if _send_pool is None:
        _send_pool = ThreadPoolExecutor(
            max_workers=settings.SALVO_DELIVERY_SEND_THREADS, thread_name_prefix="salvo-send"
        )
    return _send_pool


def _forget_sending_threads() -> None:
    global _send_pool
    _send_pool = None  # a forked child has none of its parent's threads


os.register_at_fork(after_in_child=_forget_sending_threads)


def _send_chunks(batch: Batch, *, action: ChannelAction, campaign: Campaign) -> bool | float:
    """Send chunk after chunk of the batch until nothing in it is due now. Returns False
    once the campaign is stopped, or the seconds to wait when the preset's rate limit asks
    for a longer wait than a worker should sleep, or 0 when the worker is stopping: the
    chunk in flight has been sent and recorded, and the rest goes back to the queue.

    A rate-limited preset sends one second's worth of its rate per chunk, so that a worker
    waits in small steps; past SALVO_DELIVERY_RATE_WAIT_MAX_S it gives its reservation
    back and the batch comes back later, leaving the worker to other campaigns."""
    sender = ActionSender(
        action=action, campaign=campaign, version_id=campaign.live_version_id or action.version_id
    )
    sender.experiment = campaign_has_assignments(campaign.pk)
    try:
        while True:
            if stop_requested():
                return 0.0
            # The running version's preset: a new version may bring another one, or
            # remove the channel (what is left is skipped, with nothing to pace).
            rate = sender.preset.rate_limit_per_second if sender.content else None
            chunk = settings.SALVO_DELIVERY_SEND_CHUNK
            if rate:
                chunk = max(1, min(chunk, int(rate)))
            bucket = f"preset:{sender.preset.pk}"
            if rate:
                # Reserve before locking rows, so that no row sits locked while we wait.
                wait = ratelimit.acquire(key=bucket, rate_per_s=rate, tokens=chunk)
                if wait > settings.SALVO_DELIVERY_RATE_WAIT_MAX_S:
                    ratelimit.give_back(key=bucket, rate_per_s=rate, tokens=chunk)
                    return wait
                if wait:
                    time.sleep(wait)
            more = sender.send_chunk(batch, limit=chunk)
            if more is None:
                return False
            if not more:
                return True
    finally:
        sender.close()


def _send_chunks_in_thread(
    batch: Batch, *, action: ChannelAction, campaign: Campaign
) -> bool | float:
    # This thread's connection lives on between batches: drop it if it broke or aged out.
    close_old_connections()
    try:
        return _send_chunks(batch, action=action, campaign=campaign)
    finally:
        if connection.in_atomic_block:  # never leave a transaction open on a reused thread
            connection.close()


def batch_send(
    *, execution_id: int, action_id: int, first_profile_id: int, last_profile_id: int
) -> float | None:
    """Deliver one batch. Returns None when every row of the batch is finished, else the
    seconds after which the batch must run again (retries waiting, or rows held by another
    worker).

    On PostgreSQL, SALVO_DELIVERY_SEND_THREADS threads send chunks of the batch side by
    side, each in its own transaction (row locks keep them apart): while one waits for the
    provider or a commit, another renders. Called inside a transaction, or on SQLite
    (where a chunk renders and sends outside any transaction, and one writer at a time
    would leave threads little to overlap), it sends in the calling thread.

    Sends nothing when the campaign is stopped or the execution is over.
    """
    batch = Batch(execution_id, action_id, first_profile_id, last_profile_id)
    execution = Execution.objects.select_related("campaign").get(pk=execution_id)
    campaign = execution.campaign
    if execution.status != ExecutionStatus.RUNNING:
        return None
    if not campaign_sending(campaign.pk):
        execution_halt(execution_id)
        return None
    action = ChannelAction.objects.select_related("preset").get(pk=action_id)
    threads = settings.SALVO_DELIVERY_SEND_THREADS
    if threads <= 1 or not on_postgres() or connection.in_atomic_block:
        results = [_send_chunks(batch, action=action, campaign=campaign)]
    else:
        pool = _sending_threads()
        futures = [
            pool.submit(_send_chunks_in_thread, batch, action=action, campaign=campaign)
            for _ in range(threads)
        ]
        wait(futures)
        results = [future.result() for future in futures]  # raises a thread's error
    if any(result is False for result in results):
        execution_halt(execution_id)
        return None
    paused = [result for result in results if not isinstance(result, bool)]
    if paused:
        return min(paused)
    return range_wait(batch, now=timezone.now())
