"""Salvo settings.

Two profiles, chosen by environment variables alone:

* embedded default (nothing set): SQLite in WAL mode and kombu's zero-server
  ``filesystem://`` transport, both under ``var/``; real worker processes, one machine.
* production / scale-out: ``DATABASE_URL=postgres://…`` and
  ``CELERY_BROKER_URL=redis://…`` (or amqp://); any number of web and worker machines.

Every value is read here and nowhere else; secrets come only from the environment.
"""

import importlib.util
from pathlib import Path

import environ
from csp.constants import NONCE, NONE, SELF, UNSAFE_INLINE
from django.core.exceptions import ImproperlyConfigured
from kombu import Exchange, Queue

from channels.choices import CHANNELS
from config.logging import JSON_FORMATTER as JSON_LOG_FORMATTER

BASE_DIR = Path(__file__).resolve().parent.parent
env = environ.Env()

VAR_DIR = Path(env.str("SALVO_VAR_DIR", default=str(BASE_DIR / "var")))
VAR_DIR.mkdir(parents=True, exist_ok=True)

# --- Run profile and secrets (issue 9) -------------------------------------------------
# The embedded default is what runs when neither server is named: one machine, plain HTTP on
# loopback, development secrets that anyone can read here. Naming either server selects the
# production profile, which must bring its own secrets and hosts and refuses to start without
# them; it runs with DEBUG off and HTTPS enforced unless told otherwise (block below).
SALVO_EMBEDDED = not env.str("DATABASE_URL", default="") and not env.str(
    "CELERY_BROKER_URL", default=""
)
_PROFILE_WHY = "DATABASE_URL or CELERY_BROKER_URL is set, so this is the production profile"
_MAKE_ONE = "Make one with: python -c 'import secrets; print(secrets.token_urlsafe(50))'"
# Public by definition: only the embedded default may run with these.
_EMBEDDED_SECRETS = {
    "DJANGO_SECRET_KEY": "embedded-default-insecure-key-set-DJANGO_SECRET_KEY-in-production",
    "SALVO_WEBHOOK_SECRET": "embedded-default-webhook-secret",
    "SALVO_UNSUBSCRIBE_SECRET": "embedded-default-unsubscribe-secret",
    "SALVO_TRACKING_SECRET": "embedded-default-tracking-secret",
}


def _number(name: str, *, default: str) -> tuple[str, float]:
    """The variable as written (for the refusal's message) and its number, NaN when it is
    none: a range check (``not low <= value <= high``) then refuses it too."""
    written = env.str(name, default=default)
    try:
        return written, float(written)
    except ValueError:
        return written, float("nan")


def _secret(name: str) -> str:
    """A secret from the environment: the embedded default falls back to its public value,
    the production profile refuses to start without one of its own."""
    value = env.str(name, default="")
    if SALVO_EMBEDDED:
        return value or _EMBEDDED_SECRETS[name]
    if not value:
        raise ImproperlyConfigured(f"Set {name}: {_PROFILE_WHY}. {_MAKE_ONE}")
    if value in _EMBEDDED_SECRETS.values():
        raise ImproperlyConfigured(f"{name} is a public value of the embedded default. {_MAKE_ONE}")
    return value


DEBUG = env.bool("DJANGO_DEBUG", default=SALVO_EMBEDDED)
SECRET_KEY = _secret("DJANGO_SECRET_KEY")
# Unsubscribe links (segments/unsubscribe.py) have a key of their own rather than one derived
# from SECRET_KEY: links in sent mail must work for years, while the secret key is rotated
# with sessions, and a key kept in SECRET_KEY_FALLBACKS for old links would keep old sessions
# valid too. The fallbacks (comma-separated) still accept links signed with earlier keys: a
# rotated unsubscribe key, or the DJANGO_SECRET_KEY that signed links before this setting.
SALVO_UNSUBSCRIBE_SECRET = _secret("SALVO_UNSUBSCRIBE_SECRET")
SALVO_UNSUBSCRIBE_SECRET_FALLBACKS = env.list("SALVO_UNSUBSCRIBE_SECRET_FALLBACKS", default=[])
if not SALVO_EMBEDDED and set(SALVO_UNSUBSCRIBE_SECRET_FALLBACKS) & {*_EMBEDDED_SECRETS.values()}:
    raise ImproperlyConfigured(
        "SALVO_UNSUBSCRIBE_SECRET_FALLBACKS lists a public value of the embedded default: "
        "anyone can sign links with it. Remove it."
    )
if SALVO_EMBEDDED:
    ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
else:
    ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=[])
    if not ALLOWED_HOSTS:
        raise ImproperlyConfigured(
            "Set DJANGO_ALLOWED_HOSTS to the host names this server answers to, comma-separated "
            f"(e.g. salvo.example.com): {_PROFILE_WHY}."
        )
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])

# HTTPS: the production profile redirects to it, keeps cookies to it and sends HSTS. Each is
# an option so that a test run of the production profile can serve plain HTTP on loopback
# (`scripts/services.sh env` sets DJANGO_SECURE_SSL_REDIRECT and DJANGO_SECURE_COOKIES off).
_HTTPS = not SALVO_EMBEDDED
SECURE_SSL_REDIRECT = env.bool("DJANGO_SECURE_SSL_REDIRECT", default=_HTTPS)
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = env.bool("DJANGO_SECURE_COOKIES", default=_HTTPS)
# HSTS starts at an hour, short enough to undo a mistake: raise it to 31536000 (a year) once
# every host under the name serves HTTPS. The preload flag does nothing until the name is
# submitted to hstspreload.org, which asks for a year and for subdomains included.
SECURE_HSTS_SECONDS = env.int("DJANGO_SECURE_HSTS_SECONDS", default=3600 if _HTTPS else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS", default=_HTTPS)
SECURE_HSTS_PRELOAD = env.bool("DJANGO_SECURE_HSTS_PRELOAD", default=_HTTPS)
# Behind a proxy that terminates TLS: the header it sets to "https", e.g. X-Forwarded-Proto.
# Only with a proxy that always sets or strips it, or any client could claim HTTPS.
_proxy_ssl_header = env.str("DJANGO_SECURE_PROXY_SSL_HEADER", default="")
SECURE_PROXY_SSL_HEADER = (
    ("HTTP_" + _proxy_ssl_header.upper().replace("-", "_"), "https") if _proxy_ssl_header else None
)

INSTALLED_APPS = [
    "config.apps.SalvoAdminConfig",  # django.contrib.admin, with Salvo's home page
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "django_filters",
    "drf_spectacular",
    # Swagger UI's files, served from this server's static files (/api/docs/ works offline).
    "drf_spectacular_sidecar",
    "taggit",
    "csp",
    "anymail",
    "segments",
    "channels",
    "campaigns",
]
# The development tools (local sinks, benchmarks: devtools/) are in the checkout, not in the
# wheel: installed when importable, so an installed Salvo runs without them.
if importlib.util.find_spec("devtools") is not None:
    INSTALLED_APPS.append("devtools")

MIDDLEWARE = [
    # Load balancers' probes, answered before anything else reads the request: no host check
    # (a probe names the machine's address), no HTTPS redirect, no session (config/health.py).
    "config.health.HealthCheckMiddleware",
    # Every request's id on its response and on every log line it writes (config/logging.py).
    "config.logging.RequestIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # Static files (the admin's, the rule builder's, Swagger UI's) served by the web process
    # itself, compressed and with far-future caching of their hashed names.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "csp.middleware.CSPMiddleware",
    # Every error under /api/ is JSON, also those Django answers itself (config/api.py).
    "config.api.JsonErrorsUnderApi",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # The admin in the signed-in user's own time zone (campaigns.preferences).
    "campaigns.middleware.AdminTimeZoneMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

# Content-Security-Policy on every page (django-csp): scripts and styles only from this
# server, inline ones only with the page's nonce (templates write `nonce="{{ request.csp_nonce
# }}"`), no plugins, no framing, forms post here only. Inline style attributes stay allowed:
# the admin's status badges and DRF's browsable API use them, and they can neither run script
# nor load anything the other directives refuse. The API docs page is held to the same
# policy: Swagger UI comes from this server's static files (drf-spectacular-sidecar), its
# script from `/api/docs/?script`, and its one <style> carries the nonce
# (templates/drf_spectacular/swagger_ui.html).
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF, NONCE],
        "style-src": [SELF, NONCE],
        "style-src-attr": [UNSAFE_INLINE],
        "img-src": [SELF, "data:"],
        "object-src": [NONE],
        "base-uri": [SELF],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    },
}

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

# The project's templates: `templates/` beside the apps in a checkout; an installed wheel
# carries the same folder inside the config package (pyproject.toml's force-include).
TEMPLATES_DIR = next(
    (
        d
        for d in (BASE_DIR / "templates", Path(__file__).resolve().parent / "templates")
        if d.is_dir()
    ),
    BASE_DIR / "templates",
)
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [TEMPLATES_DIR],
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
# The embedded default's database file: a process that starts workers or commands on another
# one (the tests, on their test database) names it here, as a DATABASE_URL would select the
# production profile (config/processes.py).
SALVO_EMBEDDED_DATABASE = env.str("SALVO_EMBEDDED_DATABASE", default=str(VAR_DIR / "salvo.sqlite3"))
DATABASES = {
    "default": env.db_url("DATABASE_URL", default=f"sqlite:///{SALVO_EMBEDDED_DATABASE}"),
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
# Every time the admin shows carries its zone's name (config/formats).
FORMAT_MODULE_PATH = ["config.formats"]

STATIC_URL = "static/"
# Where `manage.py collectstatic` gathers the static files that whitenoise serves (make run
# collects them before it starts; a deployment after each release, see the README).
STATIC_ROOT = Path(env.str("SALVO_STATIC_ROOT", default=str(VAR_DIR / "static")))
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    # Each file under a name that carries a hash of its content, plus gzip and brotli copies:
    # a browser caches it for good and fetches it again only when a release changes it.
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}

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
    # DRF's parsers, with JSON bodies nested deeper than SALVO_JSON_MAX_DEPTH refused (400).
    "DEFAULT_PARSER_CLASSES": [
        "config.api.JSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
}
# Whether /api/schema/ and /api/docs/ answer visitors who are not signed in.
SALVO_API_DOCS_PUBLIC = env.bool("SALVO_API_DOCS_PUBLIC", default=False)
SPECTACULAR_SETTINGS = {
    "TITLE": "Salvo API",
    "DESCRIPTION": "Campaign orchestration: profiles, segments, presets and campaigns.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # Every endpoint needs authentication, the schema and its docs too, unless published.
    "SERVE_PERMISSIONS": ["config.permissions.ApiDocsAccess"],
    "COMPONENT_SPLIT_REQUEST": True,
    # Swagger UI from this server's static files, never a CDN (drf-spectacular-sidecar).
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # One schema name per choice set, whichever field uses it (status, source, target…).
    "ENUM_NAME_OVERRIDES": {
        "CampaignStatusEnum": "campaigns.choices.CampaignStatus",
        "ChannelKindEnum": "channels.choices.ChannelKind",
        "ReviewCodeEnum": "campaigns.choices.ReviewCode",
        "CheckLevelEnum": "campaigns.choices.CheckLevel",
        "CampaignKindEnum": "campaigns.choices.CampaignKind",
    },
}

# --- Profile data and JSON limits (issue 9) ----------------------------------------------
# What a profile's attributes may hold, checked at every door (API, admin, imports, the
# profile services): how deep objects and lists nest (the attributes object is level 1),
# their size as compact JSON in UTF-8 bytes, and the length of any key. JSON text that a
# door parses (API bodies, JSON form fields, import lines) may nest at most
# SALVO_JSON_MAX_DEPTH levels: deeper text is refused before it is parsed, as Python's
# recursion would give out in the parser or in whatever walks the result.
SALVO_PROFILE_ATTRIBUTES_MAX_DEPTH = env.int("SALVO_PROFILE_ATTRIBUTES_MAX_DEPTH", default=10)
SALVO_PROFILE_ATTRIBUTES_MAX_BYTES = env.int(
    "SALVO_PROFILE_ATTRIBUTES_MAX_BYTES", default=64 * 1024
)
SALVO_PROFILE_ATTRIBUTE_KEY_MAX_LENGTH = env.int(
    "SALVO_PROFILE_ATTRIBUTE_KEY_MAX_LENGTH", default=128
)
SALVO_JSON_MAX_DEPTH = env.int("SALVO_JSON_MAX_DEPTH", default=100)

# --- API-triggered campaigns (issue 13, campaigns.triggers) ---------------------------
# The most recipients one trigger call (API or `campaign trigger`) may name; a call over it
# is refused whole. A recipient's context is held to the attributes' limits above (depth,
# size, key length). The API's body also stays within DATA_UPLOAD_MAX_MEMORY_SIZE.
SALVO_TRIGGER_MAX_RECIPIENTS = env.int("SALVO_TRIGGER_MAX_RECIPIENTS", default=10_000)

# The live estimate of unsaved segment rules (the rule builder in the admin, asked as the
# marketer types): each estimate's queries stop after this many milliseconds, answered 503
# with a message to narrow the rules, so a heavy tree cannot tie up the database.
SALVO_SEGMENT_ESTIMATE_TIMEOUT_MS = env.int("SALVO_SEGMENT_ESTIMATE_TIMEOUT_MS", default=3000)
# On PostgreSQL, once the profiles table holds more than SAMPLE_ABOVE rows, the live estimate
# (the builder's figure, a segment's page, the API's estimate) counts the pages of a sample
# holding about SAMPLE_ROWS rows and says so, with its 95% margin; activation always counts
# exactly (segments.selectors.estimate_sample_percent). Measured at 10M profiles on 2 cores:
# 100,000 rows (1% of the pages) take 0.1-0.25 s, margin ±3.4%; 400,000 rows ±1.6%, 0.65 s.
SALVO_SEGMENT_ESTIMATE_SAMPLE_ABOVE = env.int(
    "SALVO_SEGMENT_ESTIMATE_SAMPLE_ABOVE", default=1_000_000
)
SALVO_SEGMENT_ESTIMATE_SAMPLE_ROWS = env.int("SALVO_SEGMENT_ESTIMATE_SAMPLE_ROWS", default=100_000)

# --- Celery -------------------------------------------------------------------------
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="filesystem://")
# The embedded default's broker: kombu's filesystem transport made safe (a message is written
# whole and renamed into the queue, read by claiming it, and given back when its consumer
# dies; config/broker.py). Any filesystem:// URL uses it; redis:// or amqp:// use kombu's own.
EMBEDDED_BROKER_TRANSPORT = "config.broker:Transport"
BROKER_IS_FILESYSTEM = CELERY_BROKER_URL.startswith("filesystem://")
if BROKER_IS_FILESYSTEM:
    CELERY_BROKER_TRANSPORT = EMBEDDED_BROKER_TRANSPORT
    BROKER_DIR = VAR_DIR / "broker"
    _broker_folders = ("queue", "staging", "claims", "quarantine", "processed", "control")
    for folder in _broker_folders:
        (BROKER_DIR / folder).mkdir(parents=True, exist_ok=True)
    # One folder is both ends of the queue: every process on this machine reads and writes
    # it. Every folder is on one filesystem, so that moving a message is an atomic rename.
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(BROKER_DIR / "queue"),
        "data_folder_out": str(BROKER_DIR / "queue"),
        "staging_folder": str(BROKER_DIR / "staging"),
        "claims_folder": str(BROKER_DIR / "claims"),
        "quarantine_folder": str(BROKER_DIR / "quarantine"),
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
# A worker reads its queues in order, the first that holds a message first (SALVO_QUEUES,
# below): kombu's Redis transport and the embedded broker both take this option.
CELERY_BROKER_TRANSPORT_OPTIONS["queue_order_strategy"] = "priority"

# How long /readyz waits for the broker to accept a connection before it answers 503
# (config/health.py): well under a load balancer's probe timeout.
SALVO_READYZ_BROKER_TIMEOUT_S = env.float("SALVO_READYZ_BROKER_TIMEOUT_S", default=2.0)

CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = TIME_ZONE
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")
# Three queues, so that a million-recipient campaign never delays another campaign's
# activation or the scheduler, and no run's first message waits behind another run's
# backlog: `control` (the scheduler's tick, activation, planning, proofs: short steps),
# `delivery_first` (the first, small batch of each run: ``delivery.window``) and `delivery`
# (every other batch). A worker takes a message from the first of its queues in this order
# that holds one (kombu's "priority" queue order, on Redis and on the embedded broker; on
# RabbitMQ the queues share the worker fairly), whatever order its -Q names them in, and a
# worker consuming `delivery` consumes `delivery_first` too (config.celery). Routed by task
# name (a task not listed goes to `control`) and, for the first batches, by the dispatch.
# A worker consumes them all (`-Q control,delivery`, as `make run`'s), or control or
# delivery (README, "Production"). Each task's name is written in its decorator, the one
# it always had (where it was defined): messages queued before an upgrade still find their
# task, and the code can move to other modules without renaming anything in flight.
CELERY_TASK_DEFAULT_QUEUE = "control"
SALVO_DELIVERY_QUEUE = "delivery"
SALVO_FIRST_BATCH_QUEUE = "delivery_first"
SALVO_QUEUES = (CELERY_TASK_DEFAULT_QUEUE, SALVO_FIRST_BATCH_QUEUE, SALVO_DELIVERY_QUEUE)
# Declared, so that a worker started without -Q consumes them all.
CELERY_TASK_QUEUES = [Queue(name, Exchange(name), routing_key=name) for name in SALVO_QUEUES]
CELERY_TASK_ROUTES = {"campaigns.tasks.delivery_batch_task": {"queue": SALVO_DELIVERY_QUEUE}}
# Time limits per kind of task, in seconds (Celery's soft and hard limits). At the soft limit
# a delivery batch finishes the chunk it is sending and puts the rest of the batch back in
# the queue, as at a graceful stop (config/graceful_stop.py); a control step (activation,
# planning) raises and is run again after its back-off (SALVO_STEP_*). At the hard limit the
# pool process is killed: the rows of its chunk come back after their lease, its message is
# delivered again (acks_late). Keep the hard limit a provider timeout or more above the soft.
SALVO_CONTROL_TASK_SOFT_LIMIT_S = env.float("SALVO_CONTROL_TASK_SOFT_LIMIT_S", default=120.0)
SALVO_CONTROL_TASK_HARD_LIMIT_S = env.float("SALVO_CONTROL_TASK_HARD_LIMIT_S", default=180.0)
SALVO_DELIVERY_TASK_SOFT_LIMIT_S = env.float("SALVO_DELIVERY_TASK_SOFT_LIMIT_S", default=300.0)
SALVO_DELIVERY_TASK_HARD_LIMIT_S = env.float("SALVO_DELIVERY_TASK_HARD_LIMIT_S", default=360.0)
for _soft, _hard in (
    ("SALVO_CONTROL_TASK_SOFT_LIMIT_S", "SALVO_CONTROL_TASK_HARD_LIMIT_S"),
    ("SALVO_DELIVERY_TASK_SOFT_LIMIT_S", "SALVO_DELIVERY_TASK_HARD_LIMIT_S"),
):
    if not 0 < globals()[_soft] < globals()[_hard]:
        raise ImproperlyConfigured(f"{_soft} must be above 0 and below {_hard}.")
# Every task is a control task unless its decorator says otherwise (the delivery batches do).
CELERY_TASK_SOFT_TIME_LIMIT = SALVO_CONTROL_TASK_SOFT_LIMIT_S
CELERY_TASK_TIME_LIMIT = SALVO_CONTROL_TASK_HARD_LIMIT_S

# Prometheus metrics at /metrics (config/metrics.py): readable from these addresses, or by
# a request with "Authorization: Bearer <SALVO_METRICS_TOKEN>" when a token is set. Worker
# processes record batch durations in SALVO_METRICS_DIR (prometheus-client's multiprocess
# mode), which /metrics reads when web runs on the same machine (`make run`); a worker
# machine serves its own on SALVO_WORKER_METRICS_PORT at SALVO_WORKER_METRICS_ADDRESS (0: off).
SALVO_METRICS_ALLOWED_IPS = env.list("SALVO_METRICS_ALLOWED_IPS", default=["127.0.0.1", "::1"])
SALVO_METRICS_TOKEN = env.str("SALVO_METRICS_TOKEN", default="")
SALVO_METRICS_DIR = env.str("SALVO_METRICS_DIR", default=str(VAR_DIR / "metrics"))
SALVO_WORKER_METRICS_PORT = env.int("SALVO_WORKER_METRICS_PORT", default=0)
SALVO_WORKER_METRICS_ADDRESS = env.str("SALVO_WORKER_METRICS_ADDRESS", default="127.0.0.1")

# How often the scheduler looks for Scheduled campaigns that are due, and how long a
# campaign may sit in Activating before its activation task is sent again.
# Whether a new campaign needs an approval before a version is activated (each campaign
# keeps its own flag, set from this when it is created; see campaigns.approval).
SALVO_APPROVAL_REQUIRED = env.bool("SALVO_APPROVAL_REQUIRED", default=False)
# Content experiments (campaigns.experiments): the significance level of the two-sided
# two-proportion z-test that names a winner (the limits on variants and the holdout are
# constants in campaigns.choices, checked by the database too).
SALVO_EXPERIMENT_ALPHA = env.float("SALVO_EXPERIMENT_ALPHA", default=0.05)
if not 0 < SALVO_EXPERIMENT_ALPHA < 1:
    raise ImproperlyConfigured("SALVO_EXPERIMENT_ALPHA must be between 0 and 1.")

SALVO_SCHEDULER_INTERVAL_S = env.float("SALVO_SCHEDULER_INTERVAL_S", default=2.0)
SALVO_ACTIVATION_RETRY_AFTER_S = env.float("SALVO_ACTIVATION_RETRY_AFTER_S", default=60.0)
# Deliveries of runs that ended more than this many days ago are dropped, with their
# provider events, by `manage.py retention` and every hour by the scheduler; reports keep
# their counts (campaigns.retention). 0 keeps them for ever.
SALVO_RETENTION_MAX_DAYS = 36500
_retention, _retention_days = _number("SALVO_RETENTION_DAYS", default="0")
if not 0 <= _retention_days <= SALVO_RETENTION_MAX_DAYS or _retention_days % 1:
    raise ImproperlyConfigured(
        f"SALVO_RETENTION_DAYS is {_retention!r}: give the whole days deliveries are kept "
        f"after their run ended, from 1 to {SALVO_RETENTION_MAX_DAYS}, or 0 to keep them for ever."
    )
SALVO_RETENTION_DAYS = int(_retention_days)
HISTORY_MAINTAIN_INTERVAL_S = 3600.0
CELERY_BEAT_SCHEDULE = {
    "campaigns-scheduler-tick": {
        "task": "campaigns.tasks.scheduler_tick",
        "schedule": SALVO_SCHEDULER_INTERVAL_S,
        "options": {"expires": SALVO_SCHEDULER_INTERVAL_S * 5},
    },
    # The delivery table's month partitions, and retention (campaigns.retention).
    "campaigns-history-maintain": {
        "task": "campaigns.tasks.history_maintain",
        "schedule": HISTORY_MAINTAIN_INTERVAL_S,
        "options": {"expires": HISTORY_MAINTAIN_INTERVAL_S},
    },
}

# --- Recurring campaigns (issue 13) -----------------------------------------------------
# An occurrence the scheduler finds late (it was down) still runs, once, when it is late by
# less than this; a later one is recorded as skipped and never runs (campaigns.occurrences).
SALVO_RECURRENCE_GRACE_S = env.float("SALVO_RECURRENCE_GRACE_S", default=3600.0)
# Tests only: a file holding a number of seconds by which every scheduling decision's clock
# runs ahead (campaigns.clock), so that a test can move a real scheduler and worker days on
# without waiting. Refused unless DEBUG is on: a production process never reads it.
SALVO_TEST_CLOCK_FILE = env.str("SALVO_TEST_CLOCK_FILE", default="")
if SALVO_TEST_CLOCK_FILE and not DEBUG:
    raise ImproperlyConfigured(
        "SALVO_TEST_CLOCK_FILE moves the scheduler's clock and is for tests only: it needs "
        "DJANGO_DEBUG=1. Unset it."
    )

# --- Review before activation (issue 11) ---------------------------------------------
# A campaign reaching fewer profiles than this asks for an acknowledgement of the
# "tiny_audience" warning before it activates (a test list sent by mistake); 0: never.
SALVO_REVIEW_TINY_AUDIENCE = env.int("SALVO_REVIEW_TINY_AUDIENCE", default=10)

# --- Delivery (issue 4) ---------------------------------------------------------------
# Recipients per batch task (Celery moves a few hundred tasks/s, so a task carries hundreds),
# batches kept queued per action (a bounded window, not the whole audience at once), profile
# ids snapshotted per planning step, and messages sent between two progress writes (also the
# most a worker killed mid-send can leave undecided).
SALVO_DELIVERY_BATCH_SIZE = env.int("SALVO_DELIVERY_BATCH_SIZE", default=2000)
# The first batch of each run (a one-shot campaign's, an occurrence's, a trigger's) holds at
# most this many recipients and goes to SALVO_FIRST_BATCH_QUEUE, ahead of the batches
# queued before it: its first message goes out as soon as a worker process is free.
SALVO_DELIVERY_FIRST_BATCH_SIZE = env.int("SALVO_DELIVERY_FIRST_BATCH_SIZE", default=100)
for _size in ("SALVO_DELIVERY_BATCH_SIZE", "SALVO_DELIVERY_FIRST_BATCH_SIZE"):
    if globals()[_size] < 1:
        raise ImproperlyConfigured(f"{_size} must be at least 1.")
SALVO_DELIVERY_WINDOW = env.int("SALVO_DELIVERY_WINDOW", default=8)
SALVO_DELIVERY_PLAN_CHUNK = env.int("SALVO_DELIVERY_PLAN_CHUNK", default=100_000)
SALVO_DELIVERY_SEND_CHUNK = env.int("SALVO_DELIVERY_SEND_CHUNK", default=500)
# On PostgreSQL, threads per worker process sending chunks of a batch side by side: while
# one waits for the provider or the database, another renders (1: no threads).
SALVO_DELIVERY_SEND_THREADS = env.int("SALVO_DELIVERY_SEND_THREADS", default=2)
# A worker sleeps at most this long for a preset's rate limit; a longer wait sends the
# batch back to the queue for later.
SALVO_DELIVERY_RATE_WAIT_MAX_S = env.float("SALVO_DELIVERY_RATE_WAIT_MAX_S", default=2.0)
# A batch whose rows another worker is sending looks again after this long. On SQLite it is
# also the lease of a claimed chunk: its rows come back to other workers this long after
# the claim (or after the last renewal, just before the provider call) if the worker died,
# so it must outlast one chunk's provider call. On PostgreSQL a worker that dies releases
# its rows at once. An execution with no progress for SALVO_DELIVERY_STALL_AFTER_S has its
# unfinished batches sent again (lost task messages).
SALVO_DELIVERY_SENDING_TIMEOUT_S = env.float("SALVO_DELIVERY_SENDING_TIMEOUT_S", default=60.0)
SALVO_DELIVERY_STALL_AFTER_S = env.float("SALVO_DELIVERY_STALL_AFTER_S", default=90.0)
# A batch whose rows wait (the recipient's local time, quiet hours, a retry) is queued again
# with a countdown of at most this long, and looks again then: a broker holds a delayed
# message only so long (Redis's visibility timeout, 3600 s, would hand it out twice).
SALVO_DELIVERY_WAIT_MAX_S = env.float("SALVO_DELIVERY_WAIT_MAX_S", default=900.0)
# Transient provider errors: exponential back-off from the base, capped, then "failed".
SALVO_DELIVERY_RETRY_BASE_S = env.float("SALVO_DELIVERY_RETRY_BASE_S", default=5.0)
SALVO_DELIVERY_RETRY_CAP_S = env.float("SALVO_DELIVERY_RETRY_CAP_S", default=600.0)
SALVO_DELIVERY_MAX_ATTEMPTS = env.int("SALVO_DELIVERY_MAX_ATTEMPTS", default=6)
# A step of the engine that raises (planning a chunk, sending a batch, activating a campaign)
# is run again after the same kind of back-off, at most SALVO_STEP_MAX_ATTEMPTS times in
# all; then it stops: the execution is Failed and its campaign, still Live, shows the error
# until someone stops it; an activation fails back to the status it came from. Keep the cap
# below SALVO_ACTIVATION_RETRY_AFTER_S, or a retry waiting its turn looks lost.
SALVO_STEP_MAX_ATTEMPTS = env.int("SALVO_STEP_MAX_ATTEMPTS", default=6)
SALVO_STEP_RETRY_BASE_S = env.float("SALVO_STEP_RETRY_BASE_S", default=5.0)
SALVO_STEP_RETRY_CAP_S = env.float("SALVO_STEP_RETRY_CAP_S", default=40.0)
# Celery's Django fix-up closes the database connection around every task unless told to
# reuse it: a fresh PostgreSQL backend per batch (fork, authentication, cold catalog cache)
# costs more than sending the batch. Connections are still recycled after this many tasks.
CELERY_DB_REUSE_MAX = env.int("CELERY_DB_REUSE_MAX", default=1000)

# --- The marketers' list (issue 10) ----------------------------------------------------
# A campaign gets an alert in the lists (admin icon, API `alerts`) when more than this share
# of its messages sent or failed so far failed (0.05: 5 %); also when its last activation
# failed, a delivery step failed, or its delivery stalled for SALVO_DELIVERY_STALL_AFTER_S.
_alert_rate, SALVO_ALERT_FAILURE_RATE = _number("SALVO_ALERT_FAILURE_RATE", default="0.05")
if not 0 <= SALVO_ALERT_FAILURE_RATE < 1:  # also false for NaN
    raise ImproperlyConfigured(
        f"SALVO_ALERT_FAILURE_RATE is {_alert_rate!r}: give a share of failed messages from 0 "
        "(any failure alerts) up to, not including, 1 (e.g. 0.05 for 5 %)."
    )

# --- Rendering (issue 9) ----------------------------------------------------------------
# The budget of one message (subject and body together) as its templates render, enforced
# while they render (channels/rendering/budget.py): past it, that recipient fails with the
# limit named, the others are sent. A typical message renders in ~20 µs and a loop over a
# few hundred items in ~1-2 ms; a chunk of SALVO_DELIVERY_SEND_CHUNK recipients that all hit
# the time limit still ends well within SALVO_DELIVERY_SENDING_TIMEOUT_S (500 × ~75 ms, as
# a render gets half the limit again when its thread was kept off the CPU). 100,000
# characters is about where Gmail clips an email (102 KB); SMS and push carry far less.
SALVO_RENDER_TIMEOUT_MS = env.int("SALVO_RENDER_TIMEOUT_MS", default=50)
SALVO_RENDER_MAX_CHARS = env.int("SALVO_RENDER_MAX_CHARS", default=100_000)

# --- Proofs (issue 11) ------------------------------------------------------------------
# The most test profiles one proof goes to: a proof is a check by a colleague's eyes, and
# a larger list is an audience that belongs in a segment. Asking for more is refused at
# every door (campaigns.proofs).
SALVO_PROOF_MAX_RECIPIENTS = env.int("SALVO_PROOF_MAX_RECIPIENTS", default=10)

# --- Rate limits ---------------------------------------------------------------------
# Where the token buckets of rate-limited presets live (channels.ratelimit), shared by every
# worker process on every machine: "redis" (one atomic script per reservation, on Redis's
# clock) or "database" (one row per bucket, updated under a row lock). By default Redis when
# the broker is Redis, else the database (PostgreSQL with an amqp:// broker, or SQLite).
SALVO_RATELIMIT_REDIS_URL = env.str(
    "SALVO_RATELIMIT_REDIS_URL",
    default=CELERY_BROKER_URL if CELERY_BROKER_URL.startswith(("redis://", "rediss://")) else "",
)
SALVO_RATELIMIT_BACKEND = env.str(
    "SALVO_RATELIMIT_BACKEND", default="redis" if SALVO_RATELIMIT_REDIS_URL else "database"
)
if SALVO_RATELIMIT_BACKEND not in ("redis", "database"):
    raise ImproperlyConfigured(
        f"SALVO_RATELIMIT_BACKEND is {SALVO_RATELIMIT_BACKEND!r}: choose redis or database."
    )
if SALVO_RATELIMIT_BACKEND == "redis" and not SALVO_RATELIMIT_REDIS_URL:
    raise ImproperlyConfigured(
        "SALVO_RATELIMIT_BACKEND is redis: set SALVO_RATELIMIT_REDIS_URL (redis://host:6379/0)."
    )

# --- Channel providers (issue 4) ------------------------------------------------------
# One backend per channel, chosen like EMAIL_BACKEND; a MessagePreset may name its own.
# The defaults only log, so the embedded default never reaches the internet. Production sets
# e.g. SALVO_EMAIL_BACKEND=channels.providers.email.EmailBackend (SMTP through Django's
# email machinery, EMAIL_URL below) and SALVO_SMS_BACKEND=channels.providers.http.SmsBackend.
# Tests and benchmarks point the real backends at the local sinks (devtools/sinks/).
# Each channel's variable (SALVO_EMAIL_BACKEND…) is named by the channel registry.
SALVO_PROVIDER_BACKENDS = {
    str(kind): env.str(channel.backend_setting, default="channels.providers.console.ConsoleBackend")
    for kind, channel in CHANNELS.items()
}
# Provider backends a preset may name besides the shipped ones and the defaults above: dotted
# paths, comma-separated (e.g. myproject.providers.AcmeSmsBackend). Each class declares the
# channels it serves; nothing else is ever imported for a preset (channels.providers).
SALVO_PROVIDER_EXTRA_BACKENDS = env.list("SALVO_PROVIDER_EXTRA_BACKENDS", default=[])
# Connect + read timeout of every provider call, in seconds.
SALVO_PROVIDER_TIMEOUT_S = env.float("SALVO_PROVIDER_TIMEOUT_S", default=10.0)
# Calls an ESP backend (channels.providers.esp) makes at once within a chunk, each on its
# own connection: Postmark's and SES's personalised messages are one request each, and the
# time goes waiting for the ESP (1: one after the other). Per sending thread: a worker has
# SALVO_DELIVERY_SEND_THREADS of them, and a rate-limited preset's chunk (one second's
# worth of its rate) is all that may be in flight.
_esp_concurrency = env.str("SALVO_ESP_CONCURRENCY", default="8")
SALVO_ESP_CONCURRENCY = int(_esp_concurrency) if _esp_concurrency.isdigit() else 0
if not 1 <= SALVO_ESP_CONCURRENCY <= 64:
    raise ImproperlyConfigured(
        f"SALVO_ESP_CONCURRENCY is {_esp_concurrency!r}: give the number of requests an ESP "
        "backend makes at once, from 1 (one after the other) to 64."
    )
# Where recipients reach this Salvo from the internet, e.g. https://salvo.example.com. With
# it, marketing email carries a one-click unsubscribe link (RFC 8058) besides the mailto.
SALVO_PUBLIC_URL = env.str("SALVO_PUBLIC_URL", default="").rstrip("/")
# Links in mail reach the internet: never signed with the embedded default's public key.
if SALVO_PUBLIC_URL and SALVO_UNSUBSCRIBE_SECRET in _EMBEDDED_SECRETS.values():
    raise ImproperlyConfigured(
        "Set SALVO_UNSUBSCRIBE_SECRET: SALVO_PUBLIC_URL puts unsubscribe links in mail, and the "
        f"embedded default's key is public. {_MAKE_ONE}"
    )
# Own open and click tracking (campaigns.tracking) signs its links with a key of its own,
# for the reasons the unsubscribe key has one. Links go out only with SALVO_PUBLIC_URL: then
# without this key nothing is tracked (and the tracking views follow no link), and the
# embedded default's public value is refused, as it is outside the embedded default.
SALVO_TRACKING_SECRET = env.str("SALVO_TRACKING_SECRET", default="") or (
    _EMBEDDED_SECRETS["SALVO_TRACKING_SECRET"] if SALVO_EMBEDDED and not SALVO_PUBLIC_URL else ""
)
if (not SALVO_EMBEDDED or SALVO_PUBLIC_URL) and (
    SALVO_TRACKING_SECRET in _EMBEDDED_SECRETS.values()
):
    raise ImproperlyConfigured(
        "SALVO_TRACKING_SECRET is a public value of the embedded default: anyone could "
        f"forge tracked links with it. {_MAKE_ONE}"
    )
# A conversion is attributed to the last campaign delivery sent to its profile within
# this many days before it (campaigns.conversions).
SALVO_CONVERSION_WINDOW_DAYS = env.int("SALVO_CONVERSION_WINDOW_DAYS", default=7)
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
# A worker process keeps its SMTP connection open between batches (channels.providers.smtp)
# and closes it once idle this long: under the 5 minutes after which RFC 5321 lets a server
# drop a silent client (0: a new connection for every batch).
_smtp_idle, SALVO_SMTP_IDLE_SECONDS = _number("SALVO_SMTP_IDLE_SECONDS", default="30")
if not 0 <= SALVO_SMTP_IDLE_SECONDS <= 300:  # also false for NaN
    raise ImproperlyConfigured(
        f"SALVO_SMTP_IDLE_SECONDS is {_smtp_idle!r}: give the seconds a worker keeps an idle "
        "SMTP connection open, from 0 (none) to 300."
    )
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
# SMS through Twilio (channels.providers.twilio.TwilioSmsBackend): the account's credentials
# under Twilio's own variable names, an optional Messaging Service, and the REST API's base
# URL (the local sink's in tests). The auth token also verifies Twilio's status callbacks.
SALVO_TWILIO = {
    "account_sid": env.str("TWILIO_ACCOUNT_SID", default=""),
    "auth_token": env.str("TWILIO_AUTH_TOKEN", default=""),
    "messaging_service_sid": env.str("TWILIO_MESSAGING_SERVICE_SID", default=""),
    "api_url": env.str("SALVO_TWILIO_API_URL", default="https://api.twilio.com"),
}
# Push through FCM HTTP v1 (channels.providers.fcm.FcmPushBackend): the service account's
# key file (its token_uri says where OAuth tokens come from), the Firebase project (the
# key's own when empty) and the API's base URL.
SALVO_FCM = {
    "credentials_file": env.str("SALVO_FCM_CREDENTIALS_FILE", default=""),
    "project_id": env.str("SALVO_FCM_PROJECT_ID", default=""),
    "api_url": env.str("SALVO_FCM_API_URL", default="https://fcm.googleapis.com"),
}
# Email service providers through django-anymail (channels.providers.esp: a preset's backend
# or SALVO_EMAIL_BACKEND=channels.providers.esp.PostmarkBackend…): anymail's settings, each
# from the environment variable of the same name when set (never from the database), e.g.
# POSTMARK_SERVER_TOKEN, SENDGRID_API_KEY; *_API_URL points an ESP elsewhere (the local sink).
_ANYMAIL_ENV = (
    "POSTMARK_SERVER_TOKEN", "POSTMARK_API_URL",
    "SENDGRID_API_KEY", "SENDGRID_API_URL",
    "MAILGUN_API_KEY", "MAILGUN_API_URL", "MAILGUN_SENDER_DOMAIN",
    # Mailgun signs its tracking webhooks with this key (HMAC), on top of the basic auth.
    "MAILGUN_WEBHOOK_SIGNING_KEY",
    "SPARKPOST_API_KEY", "SPARKPOST_API_URL",
    "BREVO_API_KEY", "BREVO_API_URL",
    "RESEND_API_KEY", "RESEND_API_URL", "RESEND_SIGNING_SECRET",
    # The SES configuration set whose event destination publishes to the SNS topic that
    # posts to /anymail/amazon_ses/tracking/.
    "AMAZON_SES_CONFIGURATION_SET_NAME",
)  # fmt: skip
ANYMAIL = {name: env.str(name) for name in _ANYMAIL_ENV if env.str(name, default="")}
ANYMAIL["REQUESTS_TIMEOUT"] = SALVO_PROVIDER_TIMEOUT_S
# Amazon SES (channels.providers.esp.SesBackend) through boto3: its region and, for the local
# sink, its endpoint; boto3 reads the credentials from AWS's own variables (AWS_ACCESS_KEY_ID,
# AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN) or an instance role, never from these settings.
ANYMAIL["AMAZON_SES_CLIENT_PARAMS"] = {
    name: value
    for name, value in (
        ("region_name", env.str("AMAZON_SES_REGION", default="")),
        ("endpoint_url", env.str("AMAZON_SES_ENDPOINT_URL", default="")),
    )
    if value
}
# SES's events reach /anymail/amazon_ses/tracking/ through an SNS topic, whose subscription
# anymail confirms by SNS's ConfirmSubscription call in the topic's region (only for a post
# with the webhook's basic auth; it never fetches the SubscribeURL). Off: confirm by hand.
ANYMAIL["AMAZON_SES_AUTO_CONFIRM_SNS_SUBSCRIPTIONS"] = env.bool(
    "AMAZON_SES_AUTO_CONFIRM_SNS_SUBSCRIPTIONS", default=True
)
# Whether webhook URLs may target loopback, private, link-local, multicast and reserved
# addresses. Off in production, so that whoever edits a preset cannot make this server
# call its own or its network's private services (checked when a preset is saved, and
# after DNS resolution at each send: channels.destinations); on in the embedded default,
# whose development sinks listen on loopback. Tests and benchmarks that run the production
# profile against loopback sinks turn it on (devtools.sinks provider settings).
SALVO_WEBHOOK_ALLOW_PRIVATE_ADDRESSES = env.bool(
    "SALVO_WEBHOOK_ALLOW_PRIVATE_ADDRESSES", default=SALVO_EMBEDDED
)
# Webhook receivers verify X-Salvo-Signature (HMAC-SHA256 of the body) with this secret
# (required in production, see _secret above).
SALVO_WEBHOOK_SECRET = _secret("SALVO_WEBHOOK_SECRET")
# anymail's tracking webhooks (/anymail/<esp>/tracking/) check HTTP basic auth "user:password"
# against these (comma-separated, so that a rotation can accept two). anymail would accept
# anyone's post without one; Salvo refuses every post instead (campaigns/webhooks/urls.py).
ANYMAIL_WEBHOOK_SECRET = env.list("ANYMAIL_WEBHOOK_SECRET", default=[])

# Log lines as text (the default) or as one JSON object per line (SALVO_LOG_FORMAT=json) for
# a log collector. Either way every line written while serving a request carries the
# request's id, also sent back as the X-Request-ID header (config/logging.py).
SALVO_LOG_FORMAT = env.str("SALVO_LOG_FORMAT", default="text")
# gunicorn's own lines follow the same choice: config/gunicorn.py.
if SALVO_LOG_FORMAT not in ("text", "json"):
    raise ImproperlyConfigured(f"SALVO_LOG_FORMAT is {SALVO_LOG_FORMAT!r}: choose text or json.")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"request_id": {"()": "config.logging.RequestIdFilter"}},
    "formatters": {
        "text": {"format": "[%(asctime)s] %(levelname)s %(name)s [%(request_id)s] %(message)s"},
        "json": JSON_LOG_FORMATTER,
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "filters": ["request_id"],
            "formatter": SALVO_LOG_FORMAT,
        }
    },
    "root": {"handlers": ["console"], "level": env.str("SALVO_LOG_LEVEL", default="INFO")},
    # httpx logs every request at INFO: a million lines per campaign.
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        "httpx": {"level": "WARNING"},
        # Twilio's client logs every request and answer at INFO: thousands a second.
        "twilio.http_client": {"level": "WARNING"},
    },
}
