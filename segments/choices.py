from django.db import models


class SegmentKind(models.TextChoices):
    RULES = "rules", "Rule-based"
    STATIC = "static", "Static list"
