from __future__ import annotations

import datetime as dt
from typing import Any

from django.core.validators import RegexValidator
from django.db import models

# The channel columns' facts live in choices (the channel registry reads them without the
# models) and are re-exported here, where their readers have always found them.
from .choices import ADDRESS_FIELDS as ADDRESS_FIELDS
from .choices import CONSENT_FIELDS as CONSENT_FIELDS
from .choices import ConsentChannel, ConsentSource, SegmentKind, consent_field
from .validators import validate_attributes, validate_external_id

E164_PATTERN = r"^\+[1-9]\d{6,14}$"
validate_e164 = RegexValidator(
    E164_PATTERN,
    "Enter the phone number in E.164 form: “+”, country code and number, digits only "
    "(e.g. +33612345678).",
    code="invalid_phone",
)


class Profile(models.Model):
    """A person Salvo can reach on one or more channels."""

    # Unique through `Meta.constraints`, not `unique=True`: on PostgreSQL the latter adds a
    # second, `varchar_pattern_ops` index that no query here uses (searches are
    # case-insensitive) and that every imported row would pay for. On PostgreSQL the
    # column sorts bytewise (collation "C", set by migration 0006): an identifier needs
    # no linguistic order, and comparing bytes makes each index look-up several times
    # cheaper than the database's default collation.
    # Checked at every door (see `validators`): no character that breaks the email headers
    # and links an id goes into, and attributes within the depth, size and key limits.
    external_id = models.CharField(max_length=255, validators=[validate_external_id])
    email = models.EmailField(blank=True)
    phone = models.CharField(
        max_length=32, blank=True, validators=[validate_e164], help_text="E.164, e.g. +33612345678"
    )
    push_token = models.CharField(max_length=512, blank=True)
    locale = models.CharField(max_length=16, blank=True)
    time_zone = models.CharField(max_length=64, blank=True)
    attributes = models.JSONField(default=dict, blank=True, validators=[validate_attributes])
    # True means the profile may receive marketing on that channel.
    consent_email = models.BooleanField(default=True)
    consent_sms = models.BooleanField(default=True)
    consent_push = models.BooleanField(default=True)
    # A colleague's own profile: a campaign's proofs go to these (campaigns.proofs).
    is_test = models.BooleanField(
        "test profile",
        default=False,
        # Also the database's default: an import writes profiles by SQL of its own.
        db_default=False,
        help_text="Receives the proofs of campaigns (“Send proof”), and real sends as usual.",
    )
    # When and through which door each consent last changed (empty: never changed).
    consent_email_changed_at = models.DateTimeField(null=True, blank=True, editable=False)
    consent_email_source = models.CharField(
        max_length=32, blank=True, choices=ConsentSource.choices, editable=False
    )
    consent_sms_changed_at = models.DateTimeField(null=True, blank=True, editable=False)
    consent_sms_source = models.CharField(
        max_length=32, blank=True, choices=ConsentSource.choices, editable=False
    )
    consent_push_changed_at = models.DateTimeField(null=True, blank=True, editable=False)
    consent_push_source = models.CharField(
        max_length=32, blank=True, choices=ConsentSource.choices, editable=False
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["external_id"]
        indexes = [
            # "Joined in the last N days" rules and the admin's date ordering. There is
            # no index on `updated_at`: every import touches it, and an indexed column
            # makes each of those updates rewrite every index entry of the row.
            models.Index(fields=["created_at"], name="profile_created_at"),
            # Opted-out profiles are the minority: a partial index finds them cheaply. One
            # for the three channels (PostgreSQL uses it for "consent.sms is false" too):
            # every written row evaluates each partial index's condition.
            models.Index(
                fields=["id"],
                condition=models.Q(consent_email=False)
                | models.Q(consent_sms=False)
                | models.Q(consent_push=False),
                name="profile_opted_out",
            ),
            # Test profiles are a handful among millions: a proof finds them through a
            # partial index that every other row skips.
            models.Index(fields=["id"], condition=models.Q(is_test=True), name="profile_is_test"),
            # The GIN index on `attributes` is PostgreSQL-only: see migration 0002.
        ]
        constraints = [
            # Without a custom message, Django reports a violation on the field itself.
            models.UniqueConstraint(fields=["external_id"], name="profile_external_id_unique"),
        ]

    def __str__(self) -> str:
        return self.external_id

    @property
    def consent(self) -> dict[str, bool]:
        """Per-channel consent as the API shows it: {"email": True, "sms": …, "push": …}."""
        return {channel: self.consent_for(channel) for channel in ConsentChannel.values}

    def consent_for(self, channel: str) -> bool:
        return bool(getattr(self, consent_field(channel)))

    def set_consent(self, channel: str, allowed: bool, *, source: str, at: dt.datetime) -> bool:
        """Record a consent value; the time and source change only when the value does.

        Returns whether the value changed.
        """
        field = consent_field(channel)
        if getattr(self, field) == allowed:
            return False
        setattr(self, field, allowed)
        setattr(self, f"{field}_changed_at", at)
        setattr(self, f"{field}_source", source)
        return True


# A profile's columns by use, derived from the model so that a new column is one field: its
# doors, imports, messages and rules follow (or an entry below says why not).
#
# A profile's own data: what the admin or an API call sets and what a message can use
# (an import sets the same, less `is_test`: see `segments.imports.reading.NOT_IMPORTED`).
# Every editable column but the key and those kept apart here, with why:
NOT_PROFILE_DATA: dict[str, str] = {
    **dict.fromkeys(
        CONSENT_FIELDS,
        "consent changes through `consent` ({channel: bool}), which records when and "
        "through which door (Profile.set_consent)",
    ),
}
PROFILE_DATA_FIELDS: tuple[str, ...] = tuple(
    field.name
    for field in Profile._meta.concrete_fields
    if field.editable and not field.primary_key and field.name not in NOT_PROFILE_DATA
)


def profile_column(name: str) -> models.Field[Any, Any]:
    """The Profile column called `name` (its label, length limit…)."""
    field = Profile._meta.get_field(name)
    if not isinstance(field, models.Field) or not field.concrete:
        raise LookupError(f"Profile has no column {name!r}.")
    return field


# The data held as text: an import reads them as cells, each within its column's max_length.
PROFILE_TEXT_FIELDS: tuple[str, ...] = tuple(
    name for name in PROFILE_DATA_FIELDS if isinstance(profile_column(name), models.CharField)
)
# The data a message's content reads (``{{ profile.email }}``) and a segment's rules compare
# as text, all of it but:
NOT_CONTENT: dict[str, str] = {
    "push_token": "a device's credential for the push provider, not the person's data",
    "attributes": "read by their own keys (``profile.plan``, ``attributes.plan``)",
    "is_test": "whether a colleague receives proofs, not the person's data",
}
PROFILE_CONTENT_FIELDS: tuple[str, ...] = tuple(
    name for name in PROFILE_DATA_FIELDS if name not in NOT_CONTENT
)


class Segment(models.Model):
    """An audience: a rule tree evaluated in the database, or a fixed list of profiles."""

    name = models.CharField(max_length=200, unique=True)
    description = models.TextField(blank=True)
    kind = models.CharField(max_length=16, choices=SegmentKind.choices, default=SegmentKind.RULES)
    rules = models.JSONField(default=dict, blank=True)
    members = models.ManyToManyField(Profile, blank=True, related_name="static_segments")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(kind__in=SegmentKind.values), name="segment_kind_valid"
            ),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def is_static(self) -> bool:
        return self.kind == SegmentKind.STATIC


class AudienceSnapshot(models.Model):
    """A segment's members frozen for one delivery run, resolved inside the database."""

    segment = models.ForeignKey(
        Segment, null=True, on_delete=models.SET_NULL, related_name="snapshots"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    size = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"Snapshot {self.pk} of {self.segment or 'a deleted segment'} ({self.size})"


class AudienceMember(models.Model):
    """One recipient of a snapshot.

    `key` numbers the members 1, 2, 3… in profile-id order within the snapshot, so the
    delivery engine reads them in batches by key range or by keyset (`key > last`).
    The primary key is (snapshot, key) and it is the only index: no sequence, and no unique
    (snapshot, profile) index either (a profile is in a snapshot once because slices only
    ever add profile ids above the last member's), which is what lets a million members be
    written in about a second and a half. Neither foreign key has a
    database constraint: members are written from the profile table in the same
    statement, and a per-row constraint trigger would halve the snapshot rate.
    On PostgreSQL the table is UNLOGGED (migration 0004): after a database crash it is
    empty, which the delivery engine tolerates (see that migration for why).
    """

    pk = models.CompositePrimaryKey("snapshot_id", "key")
    snapshot = models.ForeignKey(
        AudienceSnapshot,
        on_delete=models.CASCADE,
        related_name="members",
        db_constraint=False,
        db_index=False,
    )
    key = models.PositiveIntegerField()
    profile = models.ForeignKey(
        Profile, on_delete=models.DO_NOTHING, related_name="+", db_constraint=False, db_index=False
    )

    class Meta:
        # By the columns: ordering by the relation would join the snapshot table.
        ordering = ["snapshot_id", "key"]

    def __str__(self) -> str:
        return f"{self.snapshot_id}#{self.key}: profile {self.profile_id}"


class ConsentKeyword(models.Model):
    """A person's own text to a sending number that stopped or restarted a channel (an SMS
    keyword: STOP, START…), kept once per provider message: the provider's retry of its
    webhook (the same ``message_id``) changes nothing a second time, even after a later
    keyword of the other sense. ``segments.services.consent_keyword_apply`` writes it."""

    provider = models.CharField(max_length=32)
    message_id = models.CharField(max_length=64)
    channel = models.CharField(max_length=16, choices=ConsentChannel.choices)
    address = models.CharField(max_length=320)
    keyword = models.CharField(max_length=32)
    # What the keyword asked: True to receive the channel again, False to stop.
    allowed = models.BooleanField()
    # How many profiles' consent it changed.
    profiles_changed = models.PositiveIntegerField(default=0)
    received_at = models.DateTimeField()

    class Meta:
        ordering = ["-received_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["provider", "message_id"], name="consent_keyword_once"),
        ]

    def __str__(self) -> str:
        return f"{self.keyword} from {self.address}"
