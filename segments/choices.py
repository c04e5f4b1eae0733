from django.db import models


class SegmentKind(models.TextChoices):
    RULES = "rules", "Rule-based"
    STATIC = "static", "Static list"


class ConsentChannel(models.TextChoices):
    """The channels a profile gives or withdraws marketing consent for."""

    EMAIL = "email", "Email"
    SMS = "sms", "SMS"
    PUSH = "push", "Push"


class ConsentSource(models.TextChoices):
    """Where the last change of a consent came from (kept beside the change time)."""

    API = "api", "REST API"
    ADMIN = "admin", "Admin"
    IMPORT = "import", "Import"
    UNSUBSCRIBE = "unsubscribe", "Unsubscribe link"
    SYSTEM = "system", "System"


class ImportFormat(models.TextChoices):
    CSV = "csv", "CSV"
    JSONL = "jsonl", "JSON lines"
