"""`manage.py campaign …`: the staff's door to campaigns, for scripts and cron.

Every subcommand calls a selector or a service, as the admin and the API do, and turns a
refusal into a one-line error with a non-zero exit.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import textwrap
import time
from collections.abc import Callable
from typing import Any

from django.contrib.auth.models import AnonymousUser
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django_fsm import TransitionNotAllowed, can_proceed

from campaigns import services
from campaigns.api.serializers import (
    CampaignPreviewSerializer,
    CampaignReportSerializer,
    CampaignReviewSerializer,
    CampaignSerializer,
    CampaignTransitionSerializer,
    CampaignVersionDetailSerializer,
    ProofSendSerializer,
)
from campaigns.approval import require_approved_for_activation, version_approval_text
from campaigns.choices import (
    ALL_STATUSES,
    VARIANT_LABELS,
    CampaignKind,
    CampaignStatus,
    DeliveryReason,
    ProofStatus,
)
from campaigns.delivery.timing import schedule_words
from campaigns.engagement import engagement_summary
from campaigns.exceptions import CampaignConflict
from campaigns.experiments import (
    DEFAULT_EXPERIMENT_METRIC,
    EXPERIMENT_METRICS,
    experiment_results,
    rate_words,
    split_of,
    split_words,
    winner_words,
)
from campaigns.management.doors import command_user, one_line
from campaigns.models import Campaign
from campaigns.occurrences import campaign_next_runs, run_words, version_schedule_words
from campaigns.operations import OPERATIONS, VIEW_CAMPAIGN
from campaigns.preview import (
    PREVIEW_PERMISSIONS,
    campaign_preview,
    preview_profile,
    preview_version,
)
from campaigns.proofs import (
    campaign_proof_request,
    proof_actions_with_variants,
    proof_sends_pending,
)
from campaigns.review import CampaignReview, campaign_review
from campaigns.selectors import (
    campaign_delivery_error,
    campaign_list,
    campaign_report,
    campaign_statuses_from_query,
    campaign_transitions,
    campaign_versions,
    delivery_error_summary,
)
from campaigns.tracking import tracking_words
from campaigns.triggers import (
    TriggerRefused,
    trigger_create,
    trigger_file_read,
    trigger_recipient_problems,
)
from config.permissions import require_perms

Status = CampaignStatus
WAIT_POLL_S = 0.2
# `activate --wait` without a number of seconds waits this long for a terminal status.
ACTIVATE_WAIT_DEFAULT_S = 3600.0
# Where `activate --wait` stops waiting: the campaign finished, or its activation failed
# back to Draft.
WAIT_ENDS_AT = (Status.COMPLETED, Status.STOPPED, Status.ARCHIVED, Status.DRAFT)
# `proof --wait` without a number of seconds waits this long for every proof's outcome.
PROOF_WAIT_DEFAULT_S = 120.0


class SystemUser(AnonymousUser):
    """Who acts when no --user is given: the system, as the scheduler and tasks do.

    Only used to tell which operations a status allows; the services get `user=None`.
    """

    def has_perm(self, perm: str, obj: object = None) -> bool:
        return True


def _seconds(value: float | None) -> str:
    """A time left: "unknown" when the report cannot tell it."""
    return "unknown" if value is None else f"{value:g}s"


def _duration(seconds: float | None) -> str:
    """A sending time: "as fast as the workers go" when nothing limits it."""
    if seconds is None:
        return "as fast as the workers go"
    return str(dt.timedelta(seconds=round(seconds)))


def _status_label(value: str) -> str:
    return str(Status(value).label)


class Command(BaseCommand):
    help = "List, show and drive campaigns through their lifecycle."
    # `activate` reads its confirmation from here (tests hand it a text stream).
    stealth_options = ("stdin",)

    def add_arguments(self, parser: CommandParser) -> None:
        common = CommandParser(add_help=False)
        common.add_argument(
            "--user",
            metavar="USERNAME",
            help="Act as this user (their permissions apply); default: the system.",
        )
        with_id = CommandParser(add_help=False, parents=[common])
        with_id.add_argument("id", type=int, help="Campaign id.")

        commands = parser.add_subparsers(dest="operation", required=True, metavar="OPERATION")

        listing = commands.add_parser(
            "list", parents=[common], help="Campaigns (default: draft, scheduled and live)."
        )
        which = listing.add_mutually_exclusive_group()
        which.add_argument("--all", action="store_true", help="Every status.")
        which.add_argument(
            "--status",
            action="append",
            default=[],
            metavar="STATUS",
            help=f"Repeatable: one of {', '.join(Status.values)}.",
        )
        listing.add_argument("--search", default="", help="Words in the name or description.")
        listing.add_argument(
            "--tag", action="append", default=[], help="Repeatable: campaigns with any of them."
        )
        listing.add_argument(
            "--kind", choices=CampaignKind.values, default="", help="Only campaigns of this kind."
        )
        listing.add_argument(
            "--awaiting-approval",
            action="store_true",
            help="Only campaigns whose draft awaits an approval.",
        )
        listing.add_argument("--json", action="store_true", help="JSON output.")

        show = commands.add_parser(
            "show", parents=[with_id], help="Status, versions, actions and transition log."
        )
        show.add_argument("--json", action="store_true", help="JSON output.")

        report = commands.add_parser(
            "report",
            parents=[with_id],
            help="Per channel: audience, sent, failed, skipped (with the reasons), pending, "
            "rate and time left.",
        )
        report.add_argument(
            "--json", action="store_true", help="The report as GET …/report/ returns it."
        )
        report.add_argument(
            "--metric",
            choices=list(EXPERIMENT_METRICS),
            default=DEFAULT_EXPERIMENT_METRIC,
            help="What the experiment's variants are compared on.",
        )

        preview = commands.add_parser(
            "preview",
            parents=[with_id],
            help="Each action rendered for one profile, as it would be sent (sends nothing).",
        )
        preview.add_argument(
            "--profile", required=True, metavar="EXTERNAL_ID", help="The profile's external id."
        )
        preview.add_argument(
            "--version",
            type=int,
            metavar="N",
            help="Version number (default: the open draft, else the running version).",
        )
        preview.add_argument(
            "--json", action="store_true", help="The preview as POST …/preview/ returns it."
        )

        review = commands.add_parser(
            "review",
            parents=[with_id],
            help="What activating would do: reach per channel, schedule, estimate, a sample "
            "rendering and the checks (errors block; warnings need acknowledging).",
        )
        review.add_argument(
            "--json", action="store_true", help="The review as GET …/review/ returns it."
        )
        proof = commands.add_parser(
            "proof",
            parents=[with_id],
            help="Send every action of the draft (else the running version), each of its "
            "variants, to the test profiles, subjects prefixed [Proof] ([Proof B] for a "
            "variant's).",
        )
        proof.add_argument(
            "--profile",
            action="append",
            default=[],
            metavar="EXTERNAL_ID",
            help="Only this test profile (repeatable; default: every test profile).",
        )
        proof.add_argument(
            "--variant",
            action="append",
            default=[],
            choices=VARIANT_LABELS,
            metavar="LABEL",
            help="Only this variant, A (each action's own content) to E (repeatable; "
            "default: every variant of each action).",
        )
        proof.add_argument(
            "--wait",
            type=float,
            nargs="?",
            const=PROOF_WAIT_DEFAULT_S,
            metavar="SECONDS",
            help="Wait for every proof's outcome (default: at most "
            f"{PROOF_WAIT_DEFAULT_S:g}s) and print them; fail if one was not sent.",
        )
        proof.add_argument(
            "--json", action="store_true", help="The proof sends as GET …/proofs/ lists them."
        )

        activate = commands.add_parser(
            "activate",
            parents=[with_id],
            help="Draft (or an open draft) → Activating, after printing the review and asking "
            "for confirmation.",
        )
        activate.add_argument(
            "--yes",
            action="store_true",
            help="Do not ask: confirm, acknowledging every warning of the review.",
        )
        activate.add_argument(
            "--wait",
            type=float,
            nargs="?",
            const=ACTIVATE_WAIT_DEFAULT_S,
            metavar="SECONDS",
            help="Wait until it is Completed or Stopped (default: at most "
            f"{ACTIVATE_WAIT_DEFAULT_S:g}s) and print its report; fail if the activation "
            "failed or the time ran out.",
        )
        stop = commands.add_parser("stop", parents=[with_id], help="Scheduled or Live → Stopped.")
        stop.add_argument("--reason", default="", help="Kept in the transition log.")
        commands.add_parser("archive", parents=[with_id], help="Completed or Stopped → Archived.")
        duplicate = commands.add_parser(
            "duplicate", parents=[with_id], help="A new Draft with this campaign's content."
        )
        duplicate.add_argument("--name", default="", help="Default: “<name> (copy)”.")
        commands.add_parser(
            "modify", parents=[with_id], help="Open a draft version of a running campaign."
        )
        commands.add_parser(
            "discard-draft", parents=[with_id], help="Drop a running campaign's open draft."
        )
        trigger = commands.add_parser(
            "trigger",
            parents=[with_id],
            help="Trigger a Live API-triggered campaign for the recipients of a JSON-lines "
            "file, as POST …/trigger/ does.",
        )
        trigger.add_argument(
            "--file",
            required=True,
            metavar="PATH",
            help='One recipient per line: {"external_id", "profile": {…}, "context": {…}}.',
        )
        trigger.add_argument(
            "--idempotency-key",
            default="",
            metavar="KEY",
            help="Default: the file's SHA-256, so the same file never sends twice.",
        )
        for name, what in (
            ("request-approval", "Ask for the open draft's approval."),
            ("approve", "Approve the draft awaiting approval (not its last editor)."),
            ("reject", "Reject the draft awaiting approval, saying why (--comment)."),
        ):
            step = commands.add_parser(name, parents=[with_id], help=what)
            step.add_argument(
                "--comment",
                default="",
                help="Kept in the transition log; required to reject.",
            )

    def handle(self, *args: Any, **options: Any) -> None:
        handlers: dict[str, Callable[..., None]] = {
            "list": self.list_campaign,
            "show": self.show_campaign,
            "report": self.report_campaign,
            "preview": self.preview_campaign,
            "review": self.review_campaign,
            "proof": self.proof_campaign,
            "activate": self.activate_campaign,
            "stop": self.stop_campaign,
            "archive": self.archive_campaign,
            "duplicate": self.duplicate_campaign,
            "modify": self.modify_campaign,
            "discard-draft": self.discard_draft_campaign,
            "trigger": self.trigger_campaign,
            "request-approval": self.approval_step,
            "approve": self.approval_step,
            "reject": self.approval_step,
        }
        user = command_user(options.pop("user"))
        try:
            handlers[options["operation"]](user=user, **options)
        except (TransitionNotAllowed, CampaignConflict, PermissionDenied) as error:
            raise CommandError(str(error)) from error
        except ValidationError as error:
            raise CommandError(one_line(error)) from error

    # --- helpers ------------------------------------------------------------------------

    def _campaign(self, pk: int) -> Campaign:
        try:
            return Campaign.objects.get(pk=pk)
        except Campaign.DoesNotExist:
            raise CommandError(f"Campaign {pk} does not exist.") from None

    def _status_text(self, campaign: Campaign) -> str:
        text = _status_label(campaign.status)
        return f"{text} + open draft" if campaign.has_open_draft else text

    def _done(self, campaign: Campaign, what: str) -> None:
        self.stdout.write(
            f"Campaign {campaign.pk} “{campaign.name}”: {what}; now {self._status_text(campaign)}."
        )

    def _dump(self, data: Any) -> None:
        self.stdout.write(json.dumps(data, indent=2, ensure_ascii=False))

    # --- reading ------------------------------------------------------------------------

    def list_campaign(self, *, user: Any, **options: Any) -> None:
        require_perms(user, VIEW_CAMPAIGN, to="see campaigns")
        wanted = [ALL_STATUSES] if options["all"] else options["status"]
        statuses = campaign_statuses_from_query(wanted)
        campaigns = campaign_list(
            statuses=statuses,
            search=options["search"],
            tags=options["tag"],
            kind=options["kind"],
            awaiting_approval=True if options["awaiting_approval"] else None,
        )
        if options["json"]:
            context = {"user": user or SystemUser()}
            self._dump(CampaignSerializer(campaigns, many=True, context=context).data)
            return
        rows = [
            (
                str(c.pk),
                self._status_text(c),
                c.name,
                c.type,
                c.kind,
                ", ".join(sorted(t.name for t in c.tags.all())),
            )
            for c in campaigns
        ]
        if not rows:
            self.stdout.write("No campaigns match.")
            return
        header = ("ID", "STATUS", "NAME", "TYPE", "KIND", "TAGS")
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        for row in [header, *rows]:
            self.stdout.write(
                "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
            )

    def show_campaign(self, *, user: Any, id: int, **options: Any) -> None:
        require_perms(user, VIEW_CAMPAIGN, to="see campaigns")
        campaign = self._campaign(id)
        versions = campaign_versions(campaign=campaign)
        log = campaign_transitions(campaign=campaign)
        if options["json"]:
            context = {"user": user or SystemUser()}
            self._dump(
                {
                    **CampaignSerializer(campaign, context=context).data,
                    "versions": CampaignVersionDetailSerializer(versions, many=True).data,
                    "transitions": CampaignTransitionSerializer(log, many=True).data,
                }
            )
            return
        out = self.stdout.write
        out(f"Campaign {campaign.pk} “{campaign.name}”")
        out(f"  status:      {self._status_text(campaign)}")
        out(f"  type:        {campaign.type}")
        out(f"  kind:        {campaign.get_kind_display()}")
        out(f"  tracking:    {tracking_words(campaign)}")
        approval = version_approval_text(campaign=campaign, version=campaign.draft_version)
        out(f"  approval:    {approval}")
        out(f"  tags:        {', '.join(sorted(campaign.tags.names())) or '-'}")
        if campaign.description:
            out(f"  description: {campaign.description}")
        if campaign.activation_error:
            out(f"  last activation failed: {campaign.activation_error}")
        delivery_error = campaign_delivery_error(campaign=campaign)
        if delivery_error is not None:
            out(f"  delivery error: {delivery_error_summary(delivery_error)}")
        for version in versions:
            role = (
                "live"
                if version.pk == campaign.live_version_id
                else "draft"
                if version.pk == campaign.draft_version_id
                else "past"
            )
            start = version.start_at.isoformat() if version.start_at else "as soon as activated"
            out(f"  version {version.number} ({role})")
            out(f"    segment:  {version.segment or '-'}")
            out(f"    start:    {start}")
            recurrence = version_schedule_words(version)
            if recurrence:
                out(f"    repeats:  {recurrence}")
                if version.once_per_profile:
                    out("              once per profile")
            for line in schedule_words(version):
                out(f"    timing:   {line}")
            if version.activated_at:
                out(f"    activated {version.activated_at.isoformat()}")
            if version.holdout_share:
                out(f"    holdout:  {version.holdout_share} % get nothing")
            if version.test_share and version.winner_after is not None:
                out(
                    f"    test:     {version.test_share} % get the variants first; after "
                    f"{version.winner_after} the rest gets the winner on "
                    f"{version.get_winner_metric_display().lower()} (significant, else the "
                    "best observed)"
                )
            for action in version.actions.all():
                subject = f" “{action.subject}”" if action.subject else ""
                html = " (with an HTML part)" if action.html_body else ""
                out(f"    {action.channel} via {action.preset.name}{subject}{html}")
                variants = list(action.variants.all())
                if variants:
                    split = split_of(variant.share for variant in variants)
                    out(f"      variants: {split_words(split)}")
                    for variant in variants:
                        shown = f"“{variant.subject}” " if variant.subject else ""
                        html = " (with an HTML part)" if variant.html_body else ""
                        out(f"      {variant.label}: {shown}{variant.body[:60]!r}{html}")
        next_runs = campaign_next_runs(campaign=campaign)
        if next_runs and campaign.live_version is not None:
            out("  next runs:")
            for moment in next_runs:
                out(f"    {run_words(moment, version=campaign.live_version)}")
        out("  transitions (newest first):")
        for entry in log:
            by = entry.by.get_username() if entry.by else "system"
            reason = f" — {entry.reason}" if entry.reason else ""
            out(
                f"    {entry.at.isoformat(timespec='seconds')}  {entry.label} ({entry.name}): "
                f"{entry.source} → {entry.target} by {by}{reason}"
            )

    def report_campaign(self, *, user: Any, id: int, **options: Any) -> None:
        require_perms(user, VIEW_CAMPAIGN, to="see campaigns")
        campaign = self._campaign(id)
        if options["json"]:
            report = {
                **campaign_report(campaign=campaign),
                "delivery_error": campaign_delivery_error(campaign=campaign),
                "experiment": experiment_results(campaign=campaign, metric=options["metric"]),
            }
            self._dump(CampaignReportSerializer(report).data)
            return
        self._print_report(campaign)
        self._print_experiment(campaign, metric=options["metric"])

    def _print_experiment(self, campaign: Campaign, *, metric: str) -> None:
        """The experiment's groups compared on `metric`, and the verdict."""
        results = experiment_results(campaign=campaign, metric=metric)
        if results is None:
            return
        out = self.stdout.write
        out(f"  experiment on {results['metric_label'].lower()}:")
        for row in results["groups"]:
            lift = "" if row["lift"] is None else f", lift vs holdout {row['lift']:+.1%}"
            out(
                f"    {row['group']}: n {row['n']}, {row['count']} "
                f"({rate_words(row['rate'])}){lift}"
            )
        holdout = results["holdout"]
        if holdout is not None:
            counted = "" if holdout["count"] is None else f", {holdout['count']}"
            out(f"    holdout: n {holdout['n']}{counted} ({rate_words(holdout['rate'])})")
        if results["note"]:
            out(f"    {results['note']}")
        out(f"    {winner_words(results)}")

    def _print_report(self, campaign: Campaign) -> None:
        """The report as a table, one row per channel, then why deliveries were not sent
        and the rate."""
        report = campaign_report(campaign=campaign)
        out = self.stdout.write
        out(f"Campaign {campaign.pk} “{campaign.name}”: {self._status_text(campaign)}")
        delivery_error = campaign_delivery_error(campaign=campaign)
        if delivery_error is not None:
            out(f"  delivery error: {delivery_error_summary(delivery_error)}")
        if not report["by_channel"]:
            out("  No deliveries yet.")
            return
        rate = report["rate"]
        header = (
            "CHANNEL", "AUDIENCE", "SENT", "FAILED", "SKIPPED", "PENDING", "RATE/S", "TIME-LEFT"
        )  # fmt: skip
        rows = [
            (
                channel,
                *(str(counts[key]) for key in ("total", "sent", "failed", "skipped", "pending")),
                f"{rate['by_channel'].get(channel, 0.0):g}",
                _seconds(rate["time_left_s_by_channel"].get(channel)),
            )
            for channel, counts in report["by_channel"].items()
        ]
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        for row in [header, *rows]:
            out(
                "  "
                + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
            )
        for channel, reasons in report["by_reason"].items():
            why = ", ".join(
                f"{DeliveryReason(reason).label.lower()} {count}"
                for reason, count in reasons.items()
            )
            out(f"  {channel} not sent: {why}")
        out(
            f"  rate: {rate['per_s']:g}/s over the last {rate['window_s']}s; time left: "
            f"{_seconds(rate['time_left_s'])}"
        )
        for channel, engagement in report["engagement"]["by_channel"].items():
            out(f"  {channel} after the send: {engagement_summary(engagement)}")
        for group, engagement in report["engagement"]["by_variant"].items():
            out(f"  {group} (profiles) after the send: {engagement_summary(engagement)}")
        for channel, reasons in report["waiting"].items():
            for reason, waiting in reasons.items():
                out(
                    f"  {channel} waiting: {waiting['count']} "
                    f"({DeliveryReason(reason).label.lower()}), the last until "
                    f"{waiting['until'].isoformat()}"
                )

    def preview_campaign(
        self, *, user: Any, id: int, profile: str, version: int | None, **options: Any
    ) -> None:
        require_perms(user, *PREVIEW_PERMISSIONS, to="preview a campaign for a profile")
        campaign = self._campaign(id)
        preview = campaign_preview(
            campaign=campaign,
            profile=preview_profile(external_id=profile),
            user=user,
            version=preview_version(campaign=campaign, number=version),
        )
        if options["json"]:
            self._dump(CampaignPreviewSerializer(preview).data)
            return
        out = self.stdout.write
        out(
            f"Campaign {campaign.pk} “{campaign.name}”, version {preview.version.number} "
            f"({preview.role}), for profile {preview.profile.external_id}"
        )
        if preview.experiment is not None:
            split = ", ".join(f"{label} {share} %" for label, share in preview.experiment.split)
            out(
                f"  Experiment: {preview.experiment.words}; holdout "
                f"{preview.experiment.holdout_share} %, split {split}"
            )
        for shown in preview.actions:
            out(
                f"  {shown.channel_label} via {shown.preset}"
                + (f" to {shown.to}" if shown.to else "")
            )
            if not shown.variants:
                self._print_preview_content(shown, "    ")
                continue
            for content in (shown, *shown.variants):
                mark = ": what this profile gets" if content.profile_gets else ""
                out(f"    variant {content.label} ({content.share} %){mark}")
                self._print_preview_content(content, "      ")

    def _print_preview_content(self, shown: Any, indent: str) -> None:
        out = self.stdout.write
        if shown.error:
            out(f"{indent}error: {shown.error}")
            return
        if shown.skipped:
            out(f"{indent}not sent to this profile: {shown.skipped}")
        if shown.subject:
            out(f"{indent}subject: {shown.subject}")
        if shown.sms is not None:
            sms = shown.sms
            out(f"{indent}{sms.encoding}, {sms.characters} characters, {sms.segments} segment(s)")
        if shown.payload is not None:
            out(textwrap.indent(json.dumps(shown.payload, indent=2, ensure_ascii=False), indent))
        else:
            out(textwrap.indent(shown.body, indent))
        if shown.html is not None:
            out(f"{indent}html:")
            out(textwrap.indent(shown.html, indent + "  "))

    def proof_campaign(
        self,
        *,
        user: Any,
        id: int,
        profile: list[str],
        variant: list[str],
        wait: float | None,
        **options: Any,
    ) -> None:
        campaign = self._campaign(id)
        sends = campaign_proof_request(
            campaign=campaign, user=user, external_ids=profile, variants=variant
        )
        ids = [send.pk for send in sends]
        if wait is not None:
            deadline = time.monotonic() + wait
            while proof_sends_pending(proof_ids=ids):
                if time.monotonic() >= deadline:
                    raise CommandError(
                        f"The proof of campaign {id} is still being sent after {wait:g}s: "
                        "is a Celery worker running?"
                    )
                time.sleep(WAIT_POLL_S)
            for send in sends:
                send.refresh_from_db()
        if options["json"]:
            self._dump(ProofSendSerializer(sends, many=True).data)
        else:
            done = "sent" if wait is not None else "queued"
            profiles = len({send.profile_id for send in sends})
            self.stdout.write(
                f"Campaign {id} “{campaign.name}”: proof of version {sends[0].version.number} "
                f"{done} to {profiles} test profile{'s' if profiles != 1 else ''} "
                f"({len(sends)} message{'s' if len(sends) != 1 else ''})."
            )
            labelled = proof_actions_with_variants(sends)
            for send in sends:
                detail = send.provider_message_id or send.error
                # An action proved in variants says which; one without, as before.
                variant_shown = f" {send.variant}" if send.action_id in labelled else ""
                self.stdout.write(
                    f"  {send.action.get_channel_display()}{variant_shown} → "
                    f"{send.profile.external_id}: "
                    f"{send.get_status_display()}{f' ({detail})' if detail else ''}"
                )
        not_sent = [send for send in sends if wait is not None and send.status != ProofStatus.SENT]
        if not_sent:
            raise CommandError(
                f"{len(not_sent)} of {len(sends)} proof messages were not sent: {not_sent[0].error}"
            )

    # --- lifecycle ----------------------------------------------------------------------

    def review_campaign(self, *, user: Any, id: int, **options: Any) -> None:
        review = campaign_review(campaign=self._campaign(id), user=user)
        if options["json"]:
            self._dump(CampaignReviewSerializer(review).data)
            return
        self._print_review(review)

    def _print_review(self, review: CampaignReview) -> None:
        out = self.stdout.write
        campaign, version = review.campaign, review.version
        number = f"version {version.number}" if version else "no version to activate"
        out(f"Campaign {campaign.pk} “{campaign.name}”, {number}")
        segment = version.segment if version else None
        out(f"  segment: {segment.name if segment else '(none)'}: {review.audience:,} profiles")
        for shown in review.channels:
            rate = f"{shown.rate_per_s:g}/s" if shown.rate_per_s else "no rate limit"
            took = _duration(shown.seconds)
            out(f"  {shown.channel_label} via {shown.preset}: {shown.reach:,} ({rate}, {took})")
        start = review.start_at.isoformat() if review.start_at else "as soon as activated"
        out(f"  starts: {start}")
        for line in review.timing:
            out(f"  timing: {line}")
        out(f"  sending takes: {_duration(review.estimate_s)}")
        if review.sample is not None:
            out(f"  sample, for profile {review.sample.profile.external_id}:")
            for action in review.sample.actions:
                text = action.error or (f"{action.subject} | " if action.subject else "") + (
                    action.body
                )
                out(f"    {action.channel_label}: {' '.join(text.split())[:200]}")
        for check in review.checks:
            where = f" [{check.field}]" if check.field else ""
            out(f"  {check.level} {check.code}{where}: {check.message}")
        if not review.checks:
            out("  checks: none")

    def _confirmed(self, review: CampaignReview, *, yes: bool, stdin: Any) -> list[str]:
        """The warnings acknowledged: all of them with --yes, else once the person at the
        terminal confirms; a refusal (or no terminal to ask) is a CommandError."""
        campaign = review.campaign
        codes = [check.code for check in review.warnings]
        if yes or review.errors or not can_proceed(campaign.activate):
            return codes  # the service refuses errors and the state with their own words
        if not stdin.isatty():
            raise CommandError(
                f"Campaign {campaign.pk} “{campaign.name}” not activated: confirmation needed "
                "and stdin is not a terminal; run with --yes"
                + (f" to acknowledge {', '.join(codes)}." if codes else ".")
            )
        acknowledged = f", acknowledging {', '.join(codes)}" if codes else ""
        self.stdout.write(
            f"Activate: send to {review.recipients:,} profiles{acknowledged}? [y/N] ", ending=""
        )
        self.stdout.flush()
        if stdin.readline().strip().lower() not in ("y", "yes"):
            raise CommandError(f"Campaign {campaign.pk} “{campaign.name}” not activated.")
        return codes

    def activate_campaign(self, *, user: Any, id: int, wait: float | None, **options: Any) -> None:
        operation = OPERATIONS["activate"]
        require_perms(user, *operation.permissions, to=f"use “{operation.label}” on a campaign")
        campaign = self._campaign(id)
        require_approved_for_activation(campaign)  # no confirmation asked for a refusal
        review = campaign_review(campaign=campaign, user=user)
        self._print_review(review)
        acknowledge = self._confirmed(
            review, yes=options["yes"], stdin=options.get("stdin") or sys.stdin
        )
        try:
            campaign = services.campaign_activate(
                campaign=campaign, user=user, acknowledge=acknowledge
            )
        except ValidationError as error:
            raise CommandError(
                f"Campaign {id} “{campaign.name}” cannot be {OPERATIONS['activate'].done}: "
                f"{one_line(error)}"
            ) from error
        self._done(campaign, "activation requested")
        if wait is None:
            return
        deadline = time.monotonic() + wait
        campaign = self._wait_until(
            campaign, lambda c: c.status != Status.ACTIVATING, deadline, waited=wait
        )
        if campaign.activation_error:
            raise CommandError(
                f"Activation of campaign {id} failed; it is {_status_label(campaign.status)} "
                f"again: {campaign.activation_error}"
            )
        self._done(campaign, "activated")
        campaign = self._wait_until(
            campaign, lambda c: c.status in WAIT_ENDS_AT, deadline, waited=wait
        )
        self._print_report(campaign)

    def _wait_until(
        self,
        campaign: Campaign,
        reached: Callable[[Campaign], bool],
        deadline: float,
        *,
        waited: float,
    ) -> Campaign:
        """Poll the campaign until `reached` holds; past the deadline (`waited` seconds
        after the start), fail with one line saying where it stands."""
        while True:
            campaign.refresh_from_db()
            if reached(campaign):
                return campaign
            if time.monotonic() >= deadline:
                status = _status_label(campaign.status)
                if campaign.status == Status.ACTIVATING:
                    why = "is a Celery worker running?"
                else:
                    why = "see `manage.py campaign report` for where it stands."
                raise CommandError(
                    f"Campaign {campaign.pk} is still {status} after {waited:g}s: {why}"
                )
            time.sleep(WAIT_POLL_S)

    def stop_campaign(self, *, user: Any, id: int, reason: str, **options: Any) -> None:
        campaign = services.campaign_stop(campaign=self._campaign(id), user=user, reason=reason)
        self._done(campaign, "stopped")

    def archive_campaign(self, *, user: Any, id: int, **options: Any) -> None:
        campaign = services.campaign_archive(campaign=self._campaign(id), user=user)
        self._done(campaign, "archived")

    def duplicate_campaign(self, *, user: Any, id: int, name: str, **options: Any) -> None:
        copy = services.campaign_duplicate(campaign=self._campaign(id), user=user, name=name)
        self._done(copy, f"duplicated from campaign {id}")

    def modify_campaign(self, *, user: Any, id: int, **options: Any) -> None:
        campaign = self._campaign(id)
        draft = services.campaign_modify(campaign=campaign, user=user)
        campaign.refresh_from_db()
        self._done(campaign, f"draft version {draft.number} opened")

    def discard_draft_campaign(self, *, user: Any, id: int, **options: Any) -> None:
        campaign = services.campaign_discard_draft(campaign=self._campaign(id), user=user)
        self._done(campaign, "draft discarded")

    def approval_step(self, *, user: Any, id: int, comment: str, **options: Any) -> None:
        name = options["operation"].replace("-", "_")
        operation = OPERATIONS[name]
        campaign = operation.service(campaign=self._campaign(id), user=user, comment=comment)
        draft = campaign.draft_version
        assert draft is not None  # the approval steps act on the open draft
        self._done(campaign, f"version {draft.number} {operation.done}")

    def trigger_campaign(
        self, *, user: Any, id: int, file: str, idempotency_key: str, **options: Any
    ) -> None:
        campaign = self._campaign(id)
        recipients = trigger_file_read(file)
        if recipients.unreadable:
            # Every bad line at once: those that are not JSON, and the others' problems.
            problems = trigger_recipient_problems(recipients.items)
            raise CommandError(recipients.refusal_text(problems))
        try:
            result = trigger_create(
                campaign=campaign,
                user=user,
                recipients=recipients.items,
                idempotency_key=idempotency_key or recipients.digest,
            )
        except TriggerRefused as refused:
            text = recipients.refusal_text(refused.problems) if refused.problems else refused.detail
            raise CommandError(text) from refused
        trigger = result.trigger
        if result.created:
            what = f"{trigger.recipients:,} recipients, sending"
        else:
            what = f"already triggered with key “{trigger.idempotency_key}”; nothing sent again"
        self.stdout.write(
            f"Trigger {trigger.pk} of campaign {campaign.pk} “{campaign.name}”: {what}."
        )
