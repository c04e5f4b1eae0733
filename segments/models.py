from django.db import models

from .choices import SegmentKind


class Profile(models.Model):
    """A person Salvo can reach on one or more channels."""

    external_id = models.CharField(max_length=255, unique=True)
    email = models.EmailField(blank=True)
    phone = models.CharField(max_length=32, blank=True, help_text="E.164, e.g. +33612345678")
    push_token = models.CharField(max_length=512, blank=True)
    locale = models.CharField(max_length=16, blank=True)
    time_zone = models.CharField(max_length=64, blank=True)
    attributes = models.JSONField(default=dict, blank=True)
    # True means the profile may receive marketing on that channel.
    consent_email = models.BooleanField(default=True)
    consent_sms = models.BooleanField(default=True)
    consent_push = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["external_id"]

    def __str__(self) -> str:
        return self.external_id


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
