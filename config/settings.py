"""Salvo settings.

Two profiles, chosen by environment variables alone:

* embedded default (nothing set): SQLite in WAL mode and kombu's zero-server
  ``filesystem://`` transport, both under ``var/``; real worker processes, one machine.
* production / scale-out: ``DATABASE_URL=postgres://…`` and
  ``CELERY_BROKER_URL=redis://…`` (or amqp://); any number of web and worker machines.

Every value is read here and nowhere else; secrets come only from the environment.
"""

from pathlib import Path

import environ

BASE_DIR = Path(__file__).resolve().parent.parent
env = environ.Env()

VAR_DIR = Path(env.str("SALVO_VAR_DIR", default=str(BASE_DIR / "var")))
VAR_DIR.mkdir(parents=True, exist_ok=True)

DEBUG = env.bool("DJANGO_DEBUG", default=True)
SECRET_KEY = env.str(
    "DJANGO_SECRET_KEY",
    # Only the embedded default may run with this key; production sets its own.
    default="embedded-default-insecure-key-set-DJANGO_SECRET_KEY-in-production",
)
if not DEBUG and SECRET_KEY.startswith("embedded-default-insecure"):
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured("Set DJANGO_SECRET_KEY: DJANGO_DEBUG is off, so this is production.")
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "django_filters",
    "drf_spectacular",
    "taggit",
    "segments",
    "channels",
    "campaigns",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -----------------------------------------------------------------------
DATABASES = {
    "default": env.db_url("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'salvo.sqlite3'}"),
}
DATABASE_IS_SQLITE = DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3"
if DATABASE_IS_SQLITE:
    # Web and worker processes write side by side: WAL lets readers run during a write,
    # IMMEDIATE takes the write lock at BEGIN (no deadlock on lock upgrade), and the busy
    # timeout makes a writer wait its turn instead of failing with "database is locked".
    DATABASES["default"]["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": 30,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    # A file, not :memory:, so that real worker processes started by tests share it.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test-salvo.sqlite3")}
else:
    DATABASES["default"].setdefault("CONN_MAX_AGE", env.int("DATABASE_CONN_MAX_AGE", default=60))
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = env.str("DJANGO_TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"

# --- REST API -----------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["config.permissions.ModelPermissions"],
    "DEFAULT_FILTER_BACKENDS": [
        "django_filters.rest_framework.DjangoFilterBackend",
        "rest_framework.filters.SearchFilter",
        "rest_framework.filters.OrderingFilter",
    ],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": env.int("SALVO_API_PAGE_SIZE", default=50),
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "config.api.exception_handler",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Salvo API",
    "DESCRIPTION": "Campaign orchestration: profiles, segments, presets and campaigns.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    # One schema name per choice set, whichever field uses it (status, source, target…).
    "ENUM_NAME_OVERRIDES": {
        "CampaignStatusEnum": "campaigns.choices.CampaignStatus",
        "ChannelKindEnum": "channels.choices.ChannelKind",
    },
}

# --- Celery -------------------------------------------------------------------------
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="filesystem://")
BROKER_IS_FILESYSTEM = CELERY_BROKER_URL.startswith("filesystem://")
if BROKER_IS_FILESYSTEM:
    BROKER_DIR = VAR_DIR / "broker"
    for folder in ("queue", "processed", "control"):
        (BROKER_DIR / folder).mkdir(parents=True, exist_ok=True)
    # One folder is both ends of the queue: every process on this machine reads and writes it.
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(BROKER_DIR / "queue"),
        "data_folder_out": str(BROKER_DIR / "queue"),
        "processed_folder": str(BROKER_DIR / "processed"),
        "control_folder": str(BROKER_DIR / "control"),
        "store_processed": False,
        "polling_interval": 0.2,
    }
    # Broadcast control needs a fanout exchange that the folder transport does not keep
    # reliably; nothing in Salvo depends on remote control.
    CELERY_WORKER_ENABLE_REMOTE_CONTROL = False
else:
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600}

CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = TIME_ZONE
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")

# How often the scheduler looks for Scheduled campaigns that are due, and how long a
# campaign may sit in Activating before its activation task is sent again.
SALVO_SCHEDULER_INTERVAL_S = env.float("SALVO_SCHEDULER_INTERVAL_S", default=2.0)
SALVO_ACTIVATION_RETRY_AFTER_S = env.float("SALVO_ACTIVATION_RETRY_AFTER_S", default=60.0)
CELERY_BEAT_SCHEDULE = {
    "campaigns-scheduler-tick": {
        "task": "campaigns.tasks.scheduler_tick",
        "schedule": SALVO_SCHEDULER_INTERVAL_S,
        "options": {"expires": SALVO_SCHEDULER_INTERVAL_S * 5},
    },
}

# --- Delivery (issue 4) ---------------------------------------------------------------
# Recipients per batch task (Celery moves a few hundred tasks/s, so a task carries hundreds),
# batches kept queued per action (a bounded window, not the whole audience at once), profile
# ids snapshotted per planning step, and messages sent between two progress writes (also the
# most a worker killed mid-send can leave undecided).
SALVO_DELIVERY_BATCH_SIZE = env.int("SALVO_DELIVERY_BATCH_SIZE", default=2000)
SALVO_DELIVERY_WINDOW = env.int("SALVO_DELIVERY_WINDOW", default=8)
SALVO_DELIVERY_PLAN_CHUNK = env.int("SALVO_DELIVERY_PLAN_CHUNK", default=100_000)
SALVO_DELIVERY_SEND_CHUNK = env.int("SALVO_DELIVERY_SEND_CHUNK", default=500)
# On PostgreSQL, threads per worker process sending chunks of a batch side by side: while
# one waits for the provider or the database, another renders (1: no threads).
SALVO_DELIVERY_SEND_THREADS = env.int("SALVO_DELIVERY_SEND_THREADS", default=2)
# A worker sleeps at most this long for a preset's rate limit; a longer wait sends the
# batch back to the queue for later.
SALVO_DELIVERY_RATE_WAIT_MAX_S = env.float("SALVO_DELIVERY_RATE_WAIT_MAX_S", default=2.0)
# A batch whose rows another worker is sending looks again after this long (a worker that
# dies releases its rows at once); an execution with no progress this long has its
# unfinished batches sent again (lost task messages).
SALVO_DELIVERY_SENDING_TIMEOUT_S = env.float("SALVO_DELIVERY_SENDING_TIMEOUT_S", default=60.0)
SALVO_DELIVERY_STALL_AFTER_S = env.float("SALVO_DELIVERY_STALL_AFTER_S", default=90.0)
# Transient provider errors: exponential back-off from the base, capped, then "failed".
SALVO_DELIVERY_RETRY_BASE_S = env.float("SALVO_DELIVERY_RETRY_BASE_S", default=5.0)
SALVO_DELIVERY_RETRY_CAP_S = env.float("SALVO_DELIVERY_RETRY_CAP_S", default=600.0)
SALVO_DELIVERY_MAX_ATTEMPTS = env.int("SALVO_DELIVERY_MAX_ATTEMPTS", default=6)
# Celery's Django fix-up closes the database connection around every task unless told to
# reuse it: a fresh PostgreSQL backend per batch (fork, authentication, cold catalog cache)
# costs more than sending the batch. Connections are still recycled after this many tasks.
CELERY_DB_REUSE_MAX = env.int("CELERY_DB_REUSE_MAX", default=1000)

# --- Channel providers (issue 4) ------------------------------------------------------
# One backend per channel, chosen like EMAIL_BACKEND; a MessagePreset may name its own.
# The defaults only log, so the embedded default never reaches the internet. Production sets
# e.g. SALVO_EMAIL_BACKEND=channels.providers.email.EmailBackend (SMTP through Django's
# email machinery, EMAIL_URL below) and SALVO_SMS_BACKEND=channels.providers.http.SmsBackend.
# Tests and benchmarks point the real backends at the local sinks (channels/sinks.py).
SALVO_PROVIDER_BACKENDS = {
    "email": env.str("SALVO_EMAIL_BACKEND", default="channels.providers.console.ConsoleBackend"),
    "sms": env.str("SALVO_SMS_BACKEND", default="channels.providers.console.ConsoleBackend"),
    "push": env.str("SALVO_PUSH_BACKEND", default="channels.providers.console.ConsoleBackend"),
    "webhook": env.str(
        "SALVO_WEBHOOK_BACKEND", default="channels.providers.console.ConsoleBackend"
    ),
}
# Provider backends a preset may name besides the shipped ones and the defaults above: dotted
# paths, comma-separated (e.g. myproject.providers.AcmeSmsBackend). Each class declares the
# channels it serves; nothing else is ever imported for a preset (channels.providers).
SALVO_PROVIDER_EXTRA_BACKENDS = env.list("SALVO_PROVIDER_EXTRA_BACKENDS", default=[])
# Connect + read timeout of every provider call, in seconds.
SALVO_PROVIDER_TIMEOUT_S = env.float("SALVO_PROVIDER_TIMEOUT_S", default=10.0)
# Where recipients reach this Salvo from the internet, e.g. https://salvo.example.com. With
# it, marketing email carries a one-click unsubscribe link (RFC 8058) besides the mailto.
SALVO_PUBLIC_URL = env.str("SALVO_PUBLIC_URL", default="").rstrip("/")
# The Django email backend under channels.providers.email.EmailBackend: SMTP (EMAIL_URL
# below), or for high volume an HTTP batch API, channels.providers.email_api.BatchEmailBackend
# (SALVO_EMAIL_API below).
EMAIL_BACKEND = env.str("EMAIL_BACKEND", default="django.core.mail.backends.smtp.EmailBackend")
# SMTP server of channels.providers.email.EmailBackend, e.g. smtp+tls://user:pass@host:587.
_email_url = env.email_url("EMAIL_URL", default="smtp://127.0.0.1:1025")
EMAIL_HOST = _email_url["EMAIL_HOST"]
EMAIL_PORT = _email_url["EMAIL_PORT"]
EMAIL_HOST_USER = _email_url.get("EMAIL_HOST_USER") or ""
EMAIL_HOST_PASSWORD = _email_url.get("EMAIL_HOST_PASSWORD") or ""
EMAIL_USE_TLS = bool(_email_url.get("EMAIL_USE_TLS", False))
EMAIL_USE_SSL = bool(_email_url.get("EMAIL_USE_SSL", False))
EMAIL_TIMEOUT = SALVO_PROVIDER_TIMEOUT_S
SALVO_SMS_PROVIDER = {
    "url": env.str("SALVO_SMS_API_URL", default="http://127.0.0.1:8025/sms"),
    "api_key": env.str("SALVO_SMS_API_KEY", default=""),
}
SALVO_PUSH_PROVIDER = {
    "url": env.str("SALVO_PUSH_API_URL", default="http://127.0.0.1:8025/push"),
    "api_key": env.str("SALVO_PUSH_API_KEY", default=""),
}
SALVO_EMAIL_API = {
    "url": env.str("SALVO_EMAIL_API_URL", default="http://127.0.0.1:8025/email"),
    "api_key": env.str("SALVO_EMAIL_API_KEY", default=""),
}
# The embedded default: neither DATABASE_URL nor CELERY_BROKER_URL set (SQLite and the
# filesystem broker on one machine, for development); anything else is production.
SALVO_EMBEDDED = not (
    env.str("DATABASE_URL", default="") or env.str("CELERY_BROKER_URL", default="")
)
# Whether webhook URLs may target loopback, private, link-local, multicast and reserved
# addresses. Off in production, so that whoever edits a preset cannot make this server
# call its own or its network's private services (checked when a preset is saved, and
# after DNS resolution at each send: channels.destinations); on in the embedded default,
# whose development sinks listen on loopback. Tests and benchmarks that run the production
# profile against loopback sinks turn it on (channels.sinks provider settings).
SALVO_WEBHOOK_ALLOW_PRIVATE_ADDRESSES = env.bool(
    "SALVO_WEBHOOK_ALLOW_PRIVATE_ADDRESSES", default=SALVO_EMBEDDED
)
# Webhook receivers verify X-Salvo-Signature (HMAC-SHA256 of the body) with this secret.
SALVO_WEBHOOK_SECRET = env.str("SALVO_WEBHOOK_SECRET", default="embedded-default-webhook-secret")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env.str("SALVO_LOG_LEVEL", default="INFO")},
    # httpx logs every request at INFO: a million lines per campaign.
    "loggers": {"django.db.backends": {"level": "WARNING"}, "httpx": {"level": "WARNING"}},
}
