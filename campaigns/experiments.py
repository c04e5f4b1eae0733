"""Content experiments: variants of an action's content, a holdout, and their results.

Variants. An action's own content is variant A; up to ``EXPERIMENT_MAX_VARIANTS - 1``
``Variant`` rows (B, C, …) each take a share (percent) of the tested audience, and A keeps
the rest, so the shares always add up to 100 and an action without variants is simply
"A, 100 %". Keeping A as the action's own content means everything that reads an action
(the preview, the reviews, the proofs, a version's copy) still reads its main content,
and adding a variant to a running campaign's draft never leaves an action without one.

Parts. A variant has the parts its action has: a subject and a text and, when the action
is an email with an HTML part, its own HTML part (``variant_html_refusal``: every door
refuses a variant without one, or with one beside an action without). The send renders
a group's HTML part and own tracking rewrites it as it does A's; a version copies and
freezes it, and the winner's goes to the rest.

One split per campaign. A profile is in one group for the whole campaign, whatever the
channel: every action of a version that has variants must split the same way (the same
labels and shares), which ``variants_refusals`` checks when the actions are saved. An
action without variants sends its own content to every group but the holdout.

Holdout. ``CampaignVersion.holdout_share`` percent of the audience get no message of the
campaign. Their delivery rows are planned like everyone's and skipped with the reason
``holdout`` (one skip per row, as for any other reason), so the report's ``by_reason``
shows the holdout's size per channel with no new counter, and the holdout's profiles stay
known (``Assignment``) for the conversions measured against them.

Assignment. A stable hash of (campaign id, profile id) gives a bucket 0..9,999: the first
``holdout_share`` × 100 buckets are the holdout, the rest are spread over the variants by
their shares. Planning stores each chunk's groups in bulk (``assignments_plan``: one
SELECT of the chunk's members and batched INSERTs, never a query per profile); a group
once stored is kept (re-planning, another run, an occurrence find the same one), and every
chunk the workers send reads its recipients' groups in one query (``experiment_groups``).

Results. ``experiment_results`` compares the groups on a metric (``EXPERIMENT_METRICS``)
with a two-sided two-proportion z-test (``SALVO_EXPERIMENT_ALPHA``): the best group
against the runner-up, and a winner only when that difference is significant.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from statistics import NormalDist
from typing import Any

from django.conf import settings
from django.db import connection
from django.db.models import Count, OuterRef, Subquery, Sum
from django.utils import timezone

from channels.rendering import content_renderer, html_renderer
from channels.rendering.renderers import ContentRenderer

from .choices import (
    EXPERIMENT_MAX_HOLDOUT_SHARE,
    EXPERIMENT_MAX_VARIANTS,
    EXPERIMENT_WINNER_AFTER_MAX_DAYS,
    HOLDOUT_GROUP,
    REST_GROUP,
    VARIANT_LABELS,
    CampaignKind,
    DeliveryReason,
    DeliveryStatus,
    EventKind,
    ExecutionStatus,
    ExperimentMetric,
)
from .conversions import ConversionCount
from .counters import counters_add
from .models import (
    Assignment,
    AssignmentCount,
    Campaign,
    ChannelAction,
    Conversion,
    Delivery,
    Execution,
    ExperimentWinner,
    GroupEngagementCount,
    Variant,
    html_body_refusal,
)

# Buckets of the assignment hash: shares are whole percents, so 100 buckets per percent.
BUCKETS = 10_000
# Assignments written per INSERT while planning.
ASSIGNMENT_INSERT_BATCH = 5_000

# (label, share) of every group but the holdout, A first.
Split = tuple[tuple[str, int], ...]


# --- the split --------------------------------------------------------------------------


def split_of(variant_shares: Iterable[int]) -> Split:
    """The groups of an action whose variants B, C, … have these shares: A keeps the rest."""
    shares = list(variant_shares)
    return (("A", 100 - sum(shares)), *zip(VARIANT_LABELS[1:], shares, strict=False))


def split_words(split: Split) -> str:
    """ "A 50 %, B 50 %": a split as the error messages and the command show it."""
    return ", ".join(f"{label} {share} %" for label, share in split)


def holdout_refusal(value: Any) -> str:
    """Why `value` is no holdout share, or ""."""
    if not isinstance(value, int) or isinstance(value, bool):
        return "Enter a whole percent."
    if not 0 <= value <= EXPERIMENT_MAX_HOLDOUT_SHARE:
        return f"The holdout is a percent from 0 to {EXPERIMENT_MAX_HOLDOUT_SHARE}, not {value}."
    return ""


def variant_html_refusal(label: str, *, action_html: bool, variant_html: bool) -> str:
    """Why variant `label`'s HTML part does not match its action's, or "". A variant's
    parts are its action's (variant A's): an HTML part exactly when the action has one, so
    every group gets a message of the same shape and the test measures the content."""
    if action_html and not variant_html:
        return (
            f"Variant {label} needs an HTML part, as the action (variant A) has one: each "
            "variant sends its own HTML beside its text."
        )
    if variant_html and not action_html:
        return (
            f"Variant {label} has an HTML part, but the action (variant A) has none: give "
            "the action an HTML part too, or remove this one."
        )
    return ""


def variants_refusals(
    variants: Sequence[Mapping[str, Any]], *, channel: str, html_body: str
) -> dict[str, list[str]]:
    """What is wrong with the variants (each ``{share, subject, body, html_body}``,
    labelled B, C, … in order) of an action of `channel` whose own HTML part is
    `html_body`, keyed ``variants`` or ``variants[i].<field>``; empty when nothing. The
    content itself is checked as the action's is, by the caller (which refuses an HTML
    part off email: the parts' match is checked only where one may be)."""
    errors: dict[str, list[str]] = {}
    if len(variants) > EXPERIMENT_MAX_VARIANTS - 1:
        errors["variants"] = [
            f"At most {EXPERIMENT_MAX_VARIANTS} variants per action: A (the action's own "
            f"content) and {EXPERIMENT_MAX_VARIANTS - 1} more, not {len(variants) + 1}."
        ]
        return errors
    shares = []
    for index, variant in enumerate(variants):
        label = VARIANT_LABELS[index + 1]
        share = variant.get("share")
        if isinstance(share, bool) or not isinstance(share, int) or not 1 <= share <= 99:
            errors[f"variants[{index}].share"] = [
                f"Variant {label}'s share is a percent from 1 to 99, not {share!r}."
            ]
        else:
            shares.append(share)
        refusal = (
            ""
            if html_body_refusal(channel)
            else variant_html_refusal(
                label, action_html=bool(html_body), variant_html=bool(variant.get("html_body"))
            )
        )
        if refusal:
            errors[f"variants[{index}].html_body"] = [refusal]
    if not any(key.endswith(".share") for key in errors) and sum(shares) >= 100:
        errors["variants"] = [
            f"The variants' shares add up to {sum(shares)} %: they must add up to 100 % with "
            "variant A (the action's own content), which needs at least 1 %, so at most 99 %."
        ]
    return errors


def version_split_refusal(splits: Sequence[tuple[str, Split]]) -> str:
    """Why the actions' splits (each with its channel's name) cannot run in one campaign,
    or "": every action with variants must split the audience the same way."""
    tested = [(name, split) for name, split in splits if len(split) > 1]
    if any(split != tested[0][1] for _, split in tested):
        listed = "; ".join(f"{name}: {split_words(split)}" for name, split in tested)
        return (
            "Every action with variants must split the audience the same way (a profile is "
            f"in one group for the whole campaign): {listed}."
        )
    return ""


def version_split(version_id: int) -> Split:
    """The version's groups and their shares (A 100 % when no action has variants)."""
    shares: dict[int, list[int]] = {}
    for action_id, share in (
        Variant.objects.filter(action__version_id=version_id)
        .order_by("action__channel", "label")
        .values_list("action_id", "share")
    ):
        shares.setdefault(action_id, []).append(share)
    return split_of(next(iter(shares.values()), []))


# --- the admin's text form of an action's variants -----------------------------------------

# How the admin's action row writes its variants: one block per variant, blocks apart by a
# line holding only VARIANT_SEPARATOR; in each, "share: 30", then "subject: …" (channels
# with a subject), then the body on the lines after, then (an email with an HTML part) a
# line holding only VARIANT_HTML_LINE and the variant's HTML part on the lines after it.
VARIANT_SEPARATOR = "---"
VARIANT_HTML_LINE = "html:"
VARIANTS_TEXT_HELP = (
    "Variants B, C, … of this content (this row's own content is variant A, which keeps "
    "the share they leave): one block per variant, apart by a line “---”; each starts "
    "with “share: 30” (percent), then “subject: …” (email, push), then the body on the "
    "lines after. When this email has an HTML part, each variant gives its own: a line "
    "“html:” after its body, then its HTML on the lines after. Every action with variants "
    "must split the same way."
)


def variants_parse(text: str) -> list[dict[str, Any]]:
    """The variants written as ``VARIANTS_TEXT_HELP`` says; ValueError naming the block
    that is not."""
    variants: list[dict[str, Any]] = []
    blocks = [block.strip("\n") for block in text.replace("\r\n", "\n").split("\n---\n")]
    for number, block in enumerate(blocks, start=2):
        if not block.strip():
            continue
        label = VARIANT_LABELS[number - 1] if number - 1 < len(VARIANT_LABELS) else f"#{number}"
        lines = block.split("\n")
        head, _, value = lines[0].partition(":")
        if head.strip().lower() != "share" or not value.strip().isdigit():
            raise ValueError(
                f"Variant {label} must start with a line “share: <percent>”, not “{lines[0]}”."
            )
        variant: dict[str, Any] = {"share": int(value.strip()), "subject": "", "html_body": ""}
        rest = lines[1:]
        if rest and rest[0].lower().startswith("subject:"):
            variant["subject"] = rest[0].partition(":")[2].strip()
            rest = rest[1:]
        marks = [i for i, line in enumerate(rest) if line.strip().lower() == VARIANT_HTML_LINE]
        if marks:
            variant["html_body"] = "\n".join(rest[marks[0] + 1 :]).strip("\n")
            rest = rest[: marks[0]]
        variant["body"] = "\n".join(rest).strip("\n")
        variants.append(variant)
    return variants


def variants_text(variants: Iterable[Variant]) -> str:
    """Stored variants written as the admin's action row shows them."""
    blocks = []
    for variant in variants:
        lines = [f"share: {variant.share}"]
        if variant.subject:
            lines.append(f"subject: {variant.subject}")
        lines.append(variant.body)
        if variant.html_body:
            lines += [VARIANT_HTML_LINE, variant.html_body]
        blocks.append("\n".join(lines))
    return f"\n{VARIANT_SEPARATOR}\n".join(blocks)


# --- assignment -------------------------------------------------------------------------


def bucket_of(campaign_id: int, profile_id: int) -> int:
    """The profile's bucket in the campaign, 0..BUCKETS-1: the same on every machine, in
    every run (a keyed digest, never Python's salted ``hash``)."""
    digest = hashlib.blake2b(f"{campaign_id}:{profile_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


def group_of(bucket: int, *, holdout_share: int, split: Split, test_share: int = 0) -> str:
    """The group of a bucket: the holdout's buckets first, then each variant's, in label
    order, in proportion to their shares of what is left. With a `test_share` ("test,
    then send the winner"), only that percent of what is left is split among the
    variants; the rest waits for the winner (``REST_GROUP``)."""
    held = holdout_share * BUCKETS // 100
    if bucket < held:
        return HOLDOUT_GROUP
    # The buckets past the holdout, scaled back to 0..BUCKETS-1 and cut by the shares.
    scaled = (bucket - held) * BUCKETS // (BUCKETS - held)
    if test_share:
        tested = test_share * BUCKETS // 100
        if scaled >= tested:
            return REST_GROUP
        scaled = scaled * BUCKETS // tested
    edge = 0
    for label, share in split:
        edge += share * BUCKETS // 100
        if scaled < edge:
            return label
    return split[-1][0]


def has_experiment(*, holdout_share: int, split: Split) -> bool:
    return holdout_share > 0 or len(split) > 1


def assignments_store(
    *,
    campaign_id: int,
    holdout_share: int,
    split: Split,
    profile_ids: Iterable[int],
    test_share: int = 0,
) -> None:
    """Store the groups of these profiles in the campaign, keeping any stored before: a
    few batched INSERTs that ignore the profiles already assigned, and return the groups of
    those they stored, which are added to the groups' sizes (``AssignmentCount``: the
    results read them instead of counting a million assignments)."""
    now = timezone.now()
    table = Assignment._meta.db_table
    stored: Counter[str] = Counter()
    batch: list[Any] = []

    def insert() -> None:
        rows = len(batch) // 4
        with connection.cursor() as cursor:
            cursor.execute(
                f'INSERT INTO {table} (campaign_id, profile_id, "group", assigned_at) '
                f"VALUES {', '.join(['(%s, %s, %s, %s)'] * rows)} "
                'ON CONFLICT DO NOTHING RETURNING "group"',
                batch,
            )
            stored.update(group for (group,) in cursor.fetchall())
        batch.clear()

    for profile_id in profile_ids:
        group = group_of(
            bucket_of(campaign_id, profile_id),
            holdout_share=holdout_share,
            split=split,
            test_share=test_share,
        )
        batch += [campaign_id, profile_id, group, now]
        if len(batch) == 4 * ASSIGNMENT_INSERT_BATCH:
            insert()
    if batch:
        insert()
    counters_add(
        AssignmentCount,
        ("campaign_id", "group"),
        {(campaign_id, group): n for group, n in stored.items()},
    )


def execution_assign(execution: Execution, profile_ids: Iterable[int]) -> None:
    """Store the groups of these recipients of the execution, when its version runs an
    experiment: planning's chunks (``assignments_plan``) and a trigger's recipients."""
    version = execution.version
    split = version_split(version.pk)
    if not has_experiment(holdout_share=version.holdout_share, split=split):
        return
    assignments_store(
        campaign_id=execution.campaign_id,
        holdout_share=version.holdout_share,
        split=split,
        profile_ids=profile_ids,
        test_share=version.test_share,
    )


def assignments_plan(execution: Execution, first_key: int, last_key: int) -> None:
    """While planning a chunk: store the groups of the snapshot's members with keys in
    [first_key, last_key] (one SELECT, read in batches)."""
    if execution.snapshot is None:
        return
    members = execution.snapshot.members.filter(key__range=(first_key, last_key))
    profile_ids = members.values_list("profile_id", flat=True)
    execution_assign(execution, profile_ids.iterator(chunk_size=ASSIGNMENT_INSERT_BATCH))


def winner_wait_plan(execution: Execution, first_profile_id: int, last_profile_id: int) -> None:
    """While planning a chunk of a "test, then send the winner" version: the rest's rows
    (``REST_GROUP``) wait until the test ends (one UPDATE of the chunk's pending rows), so
    the engine's own due times hold them and the batches come back for them then."""
    version = execution.version
    if not version.test_share or version.winner_after is None:
        return
    rest = Assignment.objects.filter(campaign_id=execution.campaign_id, group=REST_GROUP)
    Delivery.objects.filter(
        execution=execution,
        profile_id__gte=first_profile_id,
        profile_id__lte=last_profile_id,
        status=DeliveryStatus.PENDING,
        profile_id__in=rest.values("profile_id"),
    ).update(
        next_attempt_at=execution.started_at + version.winner_after,
        reason=DeliveryReason.WINNER_WAIT,
        error="Waiting for the experiment's winner.",
    )


def campaign_has_assignments(campaign_id: int) -> bool:
    return Assignment.objects.filter(campaign_id=campaign_id).exists()


def experiment_groups(campaign_id: int, profile_ids: Sequence[int]) -> dict[int, str]:
    """The stored groups of these profiles in the campaign: one query, which the unique
    index on (campaign, profile) serves."""
    return dict(
        Assignment.objects.filter(campaign_id=campaign_id, profile_id__in=profile_ids)
        .values_list("profile_id", "group")
        .iterator(chunk_size=len(profile_ids) or 1)
    )


# --- sending ------------------------------------------------------------------------------


@dataclass
class VariantRenderers:
    """The renderers of an action's variants B, C, … (compiled once per batch and
    version): what the sender renders a recipient's group with, its subject and text and
    its HTML part; A, and a group the action has no variant for, render the action's own
    content."""

    renderers: dict[str, ContentRenderer]
    html_renderers: dict[str, Callable[..., str]]

    @classmethod
    def of(cls, action: ChannelAction, *, trigger_context: bool) -> VariantRenderers:
        variants = list(Variant.objects.filter(action=action))
        return cls(
            {
                variant.label: content_renderer(
                    subject=variant.subject, body=variant.body, trigger_context=trigger_context
                )
                for variant in variants
            },
            {
                variant.label: html_renderer(
                    html_body=variant.html_body, trigger_context=trigger_context
                )
                for variant in variants
            },
        )

    def renderer(self, group: str | None, default: ContentRenderer) -> ContentRenderer:
        return self.renderers.get(group or "", default)

    def html_renderer(self, group: str | None, default: Callable[..., str]) -> Callable[..., str]:
        return self.html_renderers.get(group or "", default)


# --- results ------------------------------------------------------------------------------


def _group_of_profile(campaign_id: int, profile_column: str) -> Subquery:
    return Subquery(
        Assignment.objects.filter(campaign_id=campaign_id, profile_id=OuterRef(profile_column))
        .order_by()
        .values("group")[:1]
    )


def _events_by_group(campaign_id: int, kinds: Sequence[str]) -> dict[str, dict[str, int]]:
    """Per group, per event kind of `kinds`, the profiles with at least one such event on a
    delivery of the campaign: the counters ``events_record`` keeps (one query on a
    handful of rows; see ``campaigns.engagement``)."""
    rows = GroupEngagementCount.objects.filter(campaign_id=campaign_id, kind__in=kinds).values_list(
        "group", "kind", "count"
    )
    counted: dict[str, dict[str, int]] = {}
    for group, kind, n in rows:
        if group and n:
            counted.setdefault(group, {})[kind] = n
    return counted


def _conversions_by_group(campaign_id: int) -> dict[str, ConversionCount]:
    """Per group, the profiles with at least one conversion attributed to the campaign and
    their value: the holdout's too (``campaigns.conversions`` attributes a held-out
    profile's conversion to the campaign that held it out). One query."""
    rows = (
        Conversion.objects.filter(campaign_id=campaign_id, profile_id__isnull=False)
        .annotate(group=_group_of_profile(campaign_id, "profile_id"))
        .values("group")
        .annotate(n=Count("profile_id", distinct=True), total=Sum("value"))
        .order_by()
    )
    return {
        row["group"]: ConversionCount(row["n"], row["total"] or Decimal(0))
        for row in rows
        if row["group"]
    }


def _event_metric(kind: str) -> Callable[[int], dict[str, int]]:
    """Per group, the profiles with at least one event of `kind`."""

    def count(campaign_id: int) -> dict[str, int]:
        counted = _events_by_group(campaign_id, [kind])
        return {group: kinds[kind] for group, kinds in counted.items()}

    return count


def _conversion_metric(campaign_id: int) -> dict[str, int]:
    """Per group, the profiles that converted."""
    return {group: c.converted for group, c in _conversions_by_group(campaign_id).items()}


def group_sizes(campaign: Campaign) -> dict[str, int]:
    """How many profiles each group of the campaign's experiment holds (one query on the
    counters ``assignments_store`` keeps)."""
    return dict(
        AssignmentCount.objects.filter(campaign=campaign, count__gt=0).values_list("group", "count")
    )


def experiment_engagement(*, campaign: Campaign, kinds: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per group of the campaign's experiment (a variant's label, the holdout, or the rest
    that a "test, then send the winner" campaign sends the winner to), ``n``
    (its profiles), per event kind of `kinds` the profiles with at least one such event on
    a delivery of the campaign, and under ``converted`` a ``ConversionCount`` of the
    profiles that converted and their value; {} when the campaign runs no experiment.
    Three queries, whatever the number of groups."""
    sizes = group_sizes(campaign)
    groups: dict[str, dict[str, Any]] = {group: {"n": n} for group, n in sizes.items()}
    if not groups:
        return {}
    for group, counted in _events_by_group(campaign.pk, kinds).items():
        if group in groups:
            groups[group].update(counted)
    for group, converted in _conversions_by_group(campaign.pk).items():
        if group in groups:
            groups[group]["converted"] = converted
    return groups


@dataclass(frozen=True)
class Metric:
    """What an experiment can be compared on: its words, how it is counted per group
    (profiles with at least one), and whether the holdout can have it at all (no message,
    no open; a conversion needs none)."""

    label: str
    count: Callable[[int], dict[str, int]]
    holdout_measured: bool


# The metrics the results compare on: per metric, a function of the campaign id returning,
# per group (variant label or "holdout"), how many profiles had it.
EXPERIMENT_METRICS: dict[str, Metric] = {
    ExperimentMetric.OPENED: Metric(
        "Opens", _event_metric(EventKind.OPENED), holdout_measured=False
    ),
    ExperimentMetric.CLICKED: Metric(
        "Clicks", _event_metric(EventKind.CLICKED), holdout_measured=False
    ),
    ExperimentMetric.CONVERTED: Metric("Conversions", _conversion_metric, holdout_measured=True),
}
DEFAULT_EXPERIMENT_METRIC: str = ExperimentMetric.OPENED


@dataclass(frozen=True)
class ZTest:
    z: float
    p_value: float


def two_proportion_z_test(x1: int, n1: int, x2: int, n2: int) -> ZTest | None:
    """The two-sided two-proportion z-test of x1/n1 against x2/n2 (pooled standard error);
    None when it cannot be computed (an empty group, or no variation at all)."""
    if n1 <= 0 or n2 <= 0:
        return None
    pooled = (x1 + x2) / (n1 + n2)
    error = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if error == 0:
        return None
    z = (x1 / n1 - x2 / n2) / error
    return ZTest(z=z, p_value=2 * (1 - NormalDist().cdf(abs(z))))


def experiment_results(*, campaign: Campaign, metric: str = "") -> dict[str, Any] | None:
    """The campaign's experiment compared on `metric` (a key of ``EXPERIMENT_METRICS``),
    or None when it runs none: per group its size `n` (profiles assigned to it), `count`
    (of them, those with the metric), `rate`, and against the holdout (when the metric
    can be measured on it) `lift` and `p_value`; `comparison` is the best group against
    the runner-up, and `winner` the best one only when that difference is significant at
    SALVO_EXPERIMENT_ALPHA."""
    metric = metric or DEFAULT_EXPERIMENT_METRIC
    if metric not in EXPERIMENT_METRICS:
        raise ValueError(
            f"Unknown experiment metric {metric!r}: choose one of {', '.join(EXPERIMENT_METRICS)}."
        )
    sizes = group_sizes(campaign)
    if not sizes:
        return None
    alpha = float(settings.SALVO_EXPERIMENT_ALPHA)
    source = EXPERIMENT_METRICS[metric]
    counted = source.count(campaign.pk)
    holdout_n = sizes.get(HOLDOUT_GROUP, 0)
    holdout_x = counted.get(HOLDOUT_GROUP, 0)
    measured = source.holdout_measured and holdout_n > 0
    groups = []
    for label in VARIANT_LABELS:
        n = sizes.get(label, 0)
        if not n:
            continue
        x = counted.get(label, 0)
        row: dict[str, Any] = {"group": label, "n": n, "count": x, "rate": x / n}
        if measured:
            against = two_proportion_z_test(x, n, holdout_x, holdout_n)
            holdout_rate = holdout_x / holdout_n
            row["lift"] = (x / n - holdout_rate) / holdout_rate if holdout_rate else None
            row["p_value"] = against.p_value if against else None
        else:
            row["lift"] = row["p_value"] = None
        groups.append(row)
    ranked = sorted(groups, key=lambda row: row["rate"], reverse=True)
    comparison = None
    winner = None
    if len(ranked) >= 2:
        best, runner_up = ranked[0], ranked[1]
        test = two_proportion_z_test(best["count"], best["n"], runner_up["count"], runner_up["n"])
        significant = test is not None and test.p_value < alpha
        comparison = {
            "best": best["group"],
            "runner_up": runner_up["group"],
            "z": test.z if test else None,
            "p_value": test.p_value if test else None,
            "significant": significant,
        }
        winner = best["group"] if significant else None
    holdout = None
    if holdout_n:
        holdout = {
            "n": holdout_n,
            "count": holdout_x if source.holdout_measured else None,
            "rate": holdout_x / holdout_n if source.holdout_measured else None,
        }
    decided = ExperimentWinner.objects.filter(campaign=campaign).first()
    return {
        "metric": metric,
        "metric_label": source.label,
        # "Test, then send the winner": the rest of the audience, and what it got.
        "rest": {
            "n": sizes.get(REST_GROUP, 0),
            "winner": decided.group if decided else None,
            "decided_on": decided.metric if decided else None,
            "significant": decided.significant if decided else None,
            "decided_at": decided.decided_at.isoformat() if decided else None,
        }
        if REST_GROUP in sizes
        else None,
        "alpha": alpha,
        "groups": groups,
        "holdout": holdout,
        "holdout_measured": source.holdout_measured,
        "note": ""
        if source.holdout_measured
        else f"{source.label} need a message: the holdout gets none, so it has no "
        f"{source.label.lower()} to compare with.",
        "comparison": comparison,
        "winner": winner,
    }


def winner_words(results: Mapping[str, Any]) -> str:
    """The verdict in words, as the admin and the command show it."""
    comparison = results["comparison"]
    if comparison is None:
        return "Nothing to compare: the experiment has one variant."
    p_value = comparison["p_value"]
    tested = (
        f"{comparison['best']} against {comparison['runner_up']}: "
        + (f"p = {p_value:.4f}" if p_value is not None else "no test possible yet")
        + f", α = {results['alpha']:g}"
    )
    if results["winner"]:
        verdict = f"Winner: variant {results['winner']} ({tested})."
    else:
        verdict = f"No winner yet: the difference is not significant ({tested})."
    rest = results.get("rest")
    if rest is not None:
        if rest["winner"] is None:
            verdict += f" The rest ({rest['n']}) waits for the winner."
        else:
            how = "significant" if rest["significant"] else "best observed, not significant"
            verdict += (
                f" The rest ({rest['n']}) got variant {rest['winner']} "
                f"(on {rest['decided_on']}, {how})."
            )
    return verdict


def rate_words(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:.1%}"


def experiment_comparisons(*, campaign: Campaign) -> list[dict[str, Any]]:
    """The experiment compared on every metric, each with its rates and verdict in words:
    what the admin's report shows; empty when the campaign runs no experiment."""
    shown = []
    for metric in EXPERIMENT_METRICS:
        results = experiment_results(campaign=campaign, metric=metric)
        if results is None:
            return []
        rows = [
            {
                **row,
                "rate_text": rate_words(row["rate"]),
                "lift_text": "-" if row["lift"] is None else f"{row['lift']:+.1%}",
            }
            for row in results["groups"]
        ]
        holdout = results["holdout"]
        if holdout is not None:
            holdout = {**holdout, "rate_text": rate_words(holdout["rate"])}
        shown.append(
            {**results, "rows": rows, "holdout": holdout, "verdict": winner_words(results)}
        )
    return shown


# --- test, then send the winner -------------------------------------------------------------


def test_then_winner_refusals(
    *,
    kind: str,
    test_share: Any,
    winner_after: Any,
    in_recipient_time_zone: bool,
) -> dict[str, str]:
    """What keeps a version's "test, then send the winner" settings from running, by
    field; empty when nothing (or when it is off: no test share and no time)."""
    if not test_share and winner_after is None:
        return {}
    errors: dict[str, str] = {}
    if isinstance(test_share, bool) or not isinstance(test_share, int) or not 1 <= test_share <= 99:
        errors["test_share"] = (
            f"A test share is a percent from 1 to 99 (0 with no time: no test), not {test_share!r}."
        )
    limit = dt.timedelta(days=EXPERIMENT_WINNER_AFTER_MAX_DAYS)
    if not isinstance(winner_after, dt.timedelta) or not dt.timedelta(0) < winner_after <= limit:
        errors["winner_after"] = (
            f"Say how long the test runs before the winner goes to the rest: more than 0 and "
            f"at most {EXPERIMENT_WINNER_AFTER_MAX_DAYS} days."
        )
    if kind != CampaignKind.ONE_SHOT:
        errors["test_share"] = "Only a one-shot campaign can test, then send the winner."
    elif in_recipient_time_zone:
        errors["test_share"] = (
            "A campaign sent in each recipient's time zone cannot also hold the rest of its "
            "audience for the winner."
        )
    return errors


def experiment_decide(*, campaign_id: int) -> ExperimentWinner:
    """The winner the rest of a "test, then send the winner" campaign gets: decided once on
    the running version's metric and kept. The best variant when the z-test finds it
    significantly better than the runner-up; otherwise the best observed rate (a tie goes
    to the earlier letter, so A when nothing was measured)."""
    found = ExperimentWinner.objects.filter(campaign_id=campaign_id).first()
    if found is not None:
        return found
    campaign = Campaign.objects.select_related("live_version").get(pk=campaign_id)
    version = campaign.live_version
    metric = version.winner_metric if version is not None else DEFAULT_EXPERIMENT_METRIC
    results = experiment_results(campaign=campaign, metric=metric)
    group, significant, p_value = "A", False, None
    if results is not None and results["groups"]:
        ranked = sorted(results["groups"], key=lambda row: row["rate"], reverse=True)
        group = results["winner"] or ranked[0]["group"]
        significant = results["winner"] is not None
        if results["comparison"] is not None:
            p_value = results["comparison"]["p_value"]
    winner, _ = ExperimentWinner.objects.get_or_create(
        campaign_id=campaign_id,
        defaults={
            "group": group,
            "metric": metric,
            "significant": significant,
            "p_value": p_value,
            "decided_at": timezone.now(),
        },
    )
    return winner


def experiments_decide_due(*, now: dt.datetime | None = None) -> list[int]:
    """The scheduler's tick: decide the winner of every running test whose time is up
    (the rest's rows fall due then; a worker reaching them first decides the same way).
    Returns the campaigns decided."""
    now = now or timezone.now()
    decided = []
    for execution in Execution.objects.filter(
        status=ExecutionStatus.RUNNING,
        version__test_share__gt=0,
        version__winner_after__isnull=False,
        campaign__experiment_winner__isnull=True,
    ).select_related("version"):
        assert execution.version.winner_after is not None
        if execution.started_at + execution.version.winner_after <= now:
            experiment_decide(campaign_id=execution.campaign_id)
            decided.append(execution.campaign_id)
    return decided
