"""Django settings for Vlinders, read from the environment (12-factor).

Every setting has a default that is safe on one machine: a SQLite file under ``var/``, the local
Redis, debug off. Secrets that are not given are generated once and kept under ``var/`` so that a
restart does not invalidate sessions or API keys. ``.env.example`` lists every variable.

``VLINDERS_ENV=production`` says the deployment is production (several hosts, HTTPS). Then
nothing is generated per host: every secret, the database and Ray's token must come from the
environment, or start-up fails with ``ImproperlyConfigured`` naming what is missing (a secret
generated on one host would differ on the next: sessions, API-key hashes and encrypted upstream
keys would break). HTTPS protections default on, so ``manage.py check --deploy`` passes with the
settings docs/operations.md lists.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path

import dj_database_url
import django_stubs_ext
from cryptography.fernet import Fernet
from django.core.exceptions import ImproperlyConfigured

django_stubs_ext.monkeypatch()

BASE_DIR = Path(__file__).resolve().parent.parent


def _env(name: str, default: str) -> str:
    """The variable's value; unset and empty both mean "use the default" (as in .env.example)."""
    return os.environ.get(name) or default


VAR_DIR = Path(_env("VLINDERS_VAR_DIR", str(BASE_DIR / "var")))


def _env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def _env_list(name: str, default: list[str]) -> list[str]:
    value = os.environ.get(name)
    if not value:
        return default
    return [item.strip() for item in value.split(",") if item.strip()]


# "production": several hosts behind HTTPS; nothing may be generated per host (see above).
VLINDERS_ENV = _env("VLINDERS_ENV", "development").strip().lower()
if VLINDERS_ENV not in {"development", "production"}:
    raise ImproperlyConfigured(
        f"VLINDERS_ENV must be 'development' or 'production', not {VLINDERS_ENV!r}."
    )
PRODUCTION = VLINDERS_ENV == "production"
DEBUG = _env_bool("DEBUG", False)
if PRODUCTION and DEBUG:
    raise ImproperlyConfigured("DEBUG must be off when VLINDERS_ENV=production.")

# What production needs from the environment and did not get; checked once, at the end.
_MISSING_IN_PRODUCTION: list[str] = []


def _token() -> str:
    return secrets.token_urlsafe(48)


def _secret(name: str, generate: Callable[[], str] = _token) -> str:
    """Return the secret from the environment, or one generated once and kept in ``var/``.

    Generated secrets are written with mode 0600 so only the platform's user can read them. In
    production nothing is generated: the name is noted as missing (start-up then fails).
    """
    value = os.environ.get(name)
    if value:
        return value
    if PRODUCTION:
        _MISSING_IN_PRODUCTION.append(name)
        return ""
    path = VAR_DIR / f"{name.lower()}.secret"
    if path.exists():
        return path.read_text().strip()
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    value = generate()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value)
    return value


def _fernet_keys(name: str, value: str) -> str:
    """Check that ``value`` is a comma-separated list of Fernet keys (first encrypts, all
    decrypt), so a malformed key fails at start-up rather than at the first encryption."""
    keys = [item.strip() for item in value.split(",") if item.strip()]
    if not keys and not PRODUCTION:
        raise ImproperlyConfigured(f"{name} holds no key.")
    for key in keys:
        try:
            Fernet(key)
        except ValueError as exc:
            raise ImproperlyConfigured(
                f"{name} must be comma-separated Fernet keys (32 url-safe base64-encoded bytes, "
                f"e.g. from cryptography.fernet.Fernet.generate_key()): {exc}"
            ) from None
    return ",".join(keys)


SECRET_KEY = _secret("SECRET_KEY")
# The pepper of API-key hashes. Kept apart from SECRET_KEY so that rotating the session secret
# does not invalidate every API key. The gateway needs the same value to hash presented keys.
VLINDERS_KEY_PEPPER = _secret("VLINDERS_KEY_PEPPER")
# What Prometheus sends (Bearer) to read the gateway's and the control plane's /metrics, which
# name tenants (docs/observability.md).
VLINDERS_METRICS_TOKEN = _secret("VLINDERS_METRICS_TOKEN")
# Fernet keys, comma-separated: the first encrypts, every one decrypts (rotation). They encrypt
# the upstream API keys of the catalog at rest and on their way to the data plane, which is
# given the same value (inference/upstream_secrets.py, inference/serving/credentials.py).
VLINDERS_SECRETS_KEY = _fernet_keys(
    "VLINDERS_SECRETS_KEY",
    _secret("VLINDERS_SECRETS_KEY", generate=lambda: Fernet.generate_key().decode()),
)

ALLOWED_HOSTS = _env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = _env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "django_celery_beat",
    "django_htmx",
    "csp",
    "django_prometheus",
    "vlinders",
    "tenants",
    "inference",
    "billing",
    "console",
]

# /metrics is answered first, before host validation and the HTTPS redirect (Prometheus scrapes
# pods by IP, in-cluster over HTTP; the endpoint has its own token): vlinders/metrics.py.
# django-prometheus' two middlewares wrap everything else, so its request metrics (count,
# latency, status by view) time the whole stack.
MIDDLEWARE = [
    "vlinders.metrics.MetricsEndpointMiddleware",
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "csp.middleware.CSPMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

ROOT_URLCONF = "vlinders.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "console.context.org_context",
            ],
        },
    },
]

WSGI_APPLICATION = "vlinders.wsgi.application"
ASGI_APPLICATION = "vlinders.asgi.application"

DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL") or f"sqlite:///{VAR_DIR / 'vlinders.sqlite3'}",
        conn_max_age=int(_env("DATABASE_CONN_MAX_AGE", "60")),
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The single-machine default has several processes writing (web, workers, beat, the Ray
    # bring-up): WAL lets readers go on beside a writer, IMMEDIATE takes the write lock when a
    # transaction starts instead of failing to upgrade it half-way ("database is locked"), and
    # a writer waits up to 20 s for another.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "timeout": 20,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    )
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
# The console's browser libraries come pinned from the npm registry (console/assets/package.json
# and its lockfile); `make assets` installs them with `npm ci` and they are served from here as
# ordinary static files: nothing is copied into the repository, nothing is bundled.
CONSOLE_ASSETS_DIR = BASE_DIR / "console" / "assets" / "node_modules"
STATICFILES_DIRS = [
    ("vendor/htmx", CONSOLE_ASSETS_DIR / "htmx.org" / "dist"),
    ("vendor/uplot", CONSOLE_ASSETS_DIR / "uplot" / "dist"),
]
# The console's Content Security Policy (django-csp): scripts, styles and connections only from
# this origin (websockets included), no inline script or style, no framing. The JSON a page
# hands its scripts travels in <script type="application/json"> blocks, which are not executed.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": ["'self'", "data:"],
        "connect-src": ["'self'"],
        "font-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'none'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    }
}
LOGIN_URL = "console:login"
LOGIN_REDIRECT_URL = "console:home"
LOGOUT_REDIRECT_URL = "console:login"

# --- Redis: the access snapshot, the limiter state, the Channels layer and the Celery broker ---
REDIS_URL = _env("REDIS_URL", "redis://127.0.0.1:6379/0")
# Every key Vlinders writes to Redis starts with this prefix (docs/access-snapshot.md).
VLINDERS_REDIS_PREFIX = _env("VLINDERS_REDIS_PREFIX", "vl:")

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        # A read timeout longer than channels_redis's blocking BZPOPMIN (brpop_timeout, 5 s):
        # redis-py 8 reads with a 5 s socket_timeout by default, which dropped every idle
        # websocket after five seconds.
        "CONFIG": {
            "hosts": [{"address": REDIS_URL, "socket_timeout": 15}],
            "prefix": f"{VLINDERS_REDIS_PREFIX}channels:",
        },
    }
}

CELERY_BROKER_URL = _env("CELERY_BROKER_URL", REDIS_URL)
# Redis has no acknowledgements of its own: kombu keeps each delivered message in an "unacked"
# hash and puts it back on its queue when it was not acknowledged within visibility_timeout. That
# is what redelivers the batch of a SIGKILLed worker (acks_late). 900 s: longer than any task
# runs plus the longest retry countdown (VLINDERS_USAGE_INGEST_RETRY_BACKOFF_MAX_S), else a task
# still running or waiting for its countdown is delivered a second time. Unacknowledged messages
# are looked for every unacked_restore_interval seconds, so a dead worker's batch comes back
# within visibility_timeout + that interval (docs/metering.md).
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": int(_env("CELERY_VISIBILITY_TIMEOUT", "900")),
    "unacked_restore_interval": int(_env("CELERY_UNACKED_RESTORE_INTERVAL", "30")),
    "unacked_restore_throttle": 1,
}
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
# Celery's Django fix-up closes every database connection before and after every task unless
# this is set: a new Postgres connection (a forked backend) per usage batch. Connections are kept
# instead, and closed like Django's between requests (broken, or older than CONN_MAX_AGE) by the
# handlers in vlinders/celery.py; this only bounds how many tasks one connection serves.
CELERY_DB_REUSE_MAX = 10_000
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_BEAT_SCHEDULE = {
    # The snapshot is published on every change; this full pass repairs a Redis that lost or
    # missed writes (restart without persistence, an outage during a publish).
    "republish-access-snapshot": {
        "task": "tenants.republish_access_snapshot",
        "schedule": float(_env("VLINDERS_SNAPSHOT_REPUBLISH_SECONDS", "300")),
    },
    # A Redis that restarted empty refuses every key until the snapshot is back: check often.
    "ensure-access-snapshot": {
        "task": "tenants.ensure_access_snapshot",
        "schedule": 10.0,
    },
}

# --- API ---
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "tenants.api.authentication.ApiKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    # A JSON API: the schema (and every client generated from it) speaks JSON only.
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    # drf-spectacular's, plus the error responses every operation shares (vlinders/openapi.py).
    "DEFAULT_SCHEMA_CLASS": "vlinders.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "vlinders.pagination.StrictLimitOffsetPagination",
    "PAGE_SIZE": 100,
    "EXCEPTION_HANDLER": "vlinders.api.exception_handler",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Vlinders management API",
    "DESCRIPTION": "Organisations, members, API keys, limits and the model catalog.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_NAME_OVERRIDES": {
        "OrganizationStatusEnum": "tenants.models.Organization.Status",
        "ApiKeyStatusEnum": "tenants.models.ApiKey.Status",
        "CatalogModelStatusEnum": "inference.models.CatalogModel.Status",
        "InvoiceStatusEnum": "billing.models.Invoice.Status",
    },
}

# Request bodies of the management API are small; refuse large ones early.
DATA_UPLOAD_MAX_MEMORY_SIZE = int(_env("DATA_UPLOAD_MAX_MEMORY_SIZE", str(1024 * 1024)))

# How often, at most, an API key's last-used time is written (coarse on purpose: one write per
# key per interval, not one per request).
VLINDERS_KEY_LAST_USED_RESOLUTION_SECONDS = 300

EMAIL_BACKEND = _env("EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
DEFAULT_FROM_EMAIL = _env("DEFAULT_FROM_EMAIL", "vlinders@localhost")
# Where EMAIL_BACKEND=django.core.mail.backends.filebased.EmailBackend writes each message.
EMAIL_FILE_PATH = _env("EMAIL_FILE_PATH", str(VAR_DIR / "mail"))

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": _env("LOG_LEVEL", "INFO")},
}

# HTTPS protections: on by default in production (manage.py check --deploy passes), off on one
# machine served over plain HTTP. Each can be set either way.
if not DEBUG:
    SESSION_COOKIE_HTTPONLY = True
    SESSION_COOKIE_SECURE = _env_bool("SECURE_COOKIES", PRODUCTION)
    CSRF_COOKIE_SECURE = _env_bool("SECURE_COOKIES", PRODUCTION)
SECURE_SSL_REDIRECT = _env_bool("SECURE_SSL_REDIRECT", PRODUCTION)
# Probes call the health check over plain HTTP inside the cluster: never redirect it.
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
SECURE_HSTS_SECONDS = int(_env("SECURE_HSTS_SECONDS", "31536000" if PRODUCTION else "0"))
SECURE_HSTS_INCLUDE_SUBDOMAINS = _env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", PRODUCTION)
SECURE_HSTS_PRELOAD = _env_bool("SECURE_HSTS_PRELOAD", PRODUCTION)
# Behind a proxy that terminates TLS, the header it sets to "https" (e.g.
# HTTP_X_FORWARDED_PROTO); only set it when the proxy always sets or strips that header.
if _env("SECURE_PROXY_SSL_HEADER", ""):
    SECURE_PROXY_SSL_HEADER = (_env("SECURE_PROXY_SSL_HEADER", ""), "https")

# --- Data plane (Ray Serve; contract 1, docs/deployment-spec.md, docs/operations.md) ----------
# Where the control plane reaches the Ray dashboard's REST API (PUT/GET /api/serve/applications/).
VLINDERS_RAY_DASHBOARD_URL = _env("VLINDERS_RAY_DASHBOARD_URL", "http://127.0.0.1:8265")


def _ray_auth_token_from_environment() -> str:
    """Ray's token (``RAY_AUTH_MODE=token``), found as Ray itself finds it: the variable, then
    ``RAY_AUTH_TOKEN``, the file at ``RAY_AUTH_TOKEN_PATH``, ``~/.ray/auth_token``; else empty.
    (``inference.ray_client.ray_auth_token`` adds the one ``manage.py run_ray`` generates.)"""
    token = os.environ.get("VLINDERS_RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN")
    if token:
        return token.strip()
    for candidate in (os.environ.get("RAY_AUTH_TOKEN_PATH"), "~/.ray/auth_token"):
        if candidate:
            path = Path(candidate).expanduser()
            if path.is_file():
                return path.read_text().strip()
    return ""


VLINDERS_RAY_AUTH_TOKEN = _ray_auth_token_from_environment()
# Where ``manage.py run_ray`` keeps the token it generates when none is configured (mode 0600).
VLINDERS_RAY_AUTH_TOKEN_FILE = VAR_DIR / "ray_auth_token"
# The gateway's HTTP address (Serve's http_options): OpenAI-compatible API for tenants.
VLINDERS_GATEWAY_HOST = _env("VLINDERS_GATEWAY_HOST", "127.0.0.1")
VLINDERS_GATEWAY_PORT = int(_env("VLINDERS_GATEWAY_PORT", "8100"))
# The gateway's base URL as tenants' clients reach it (the console's SDK snippets show it). Unset:
# where it listens, http://<host>:<port>/v1 (a wildcard host as 127.0.0.1); set it in production.
_WILDCARD_HOSTS = {"0.0.0.0", "::"}  # noqa: S104  (names compared, nothing bound)
_GATEWAY_NAME = "127.0.0.1" if VLINDERS_GATEWAY_HOST in _WILDCARD_HOSTS else VLINDERS_GATEWAY_HOST
VLINDERS_GATEWAY_PUBLIC_URL = _env(
    "VLINDERS_GATEWAY_PUBLIC_URL", f"http://{_GATEWAY_NAME}:{VLINDERS_GATEWAY_PORT}/v1"
).rstrip("/")
VLINDERS_GATEWAY_MIN_REPLICAS = int(_env("VLINDERS_GATEWAY_MIN_REPLICAS", "1"))
VLINDERS_GATEWAY_MAX_REPLICAS = int(_env("VLINDERS_GATEWAY_MAX_REPLICAS", "1"))
# Largest request body the gateway accepts, in bytes.
VLINDERS_MAX_BODY_BYTES = int(_env("VLINDERS_MAX_BODY_BYTES", str(1024 * 1024)))
# Seconds a gateway replica may cache an access-snapshot record (invalidation drops it sooner).
VLINDERS_ACCESS_CACHE_TTL_S = float(_env("VLINDERS_ACCESS_CACHE_TTL_S", "30"))
# Seconds a concurrency/budget lease lives without renewal: the gateway renews it while the
# request runs, so this only bounds how long a crashed replica's slots stay taken.
VLINDERS_LEASE_S = float(_env("VLINDERS_LEASE_S", "600"))
# "1" adds the organisation as a label of the gateway's request and token counters (one series
# per tenant and model: off by default; the usage API has per-tenant figures). Passed to Ray.
VLINDERS_METRICS_TENANT_LABELS = _env("VLINDERS_METRICS_TENANT_LABELS", "0")
# The control plane's /metrics (vlinders/metrics.py, docs/observability.md): per-organisation
# month-to-date gauges for the largest spenders only (the rest summed under org="(other)"), and
# how long the month's figures (a scan of the month's rollups) are reused between scrapes.
VLINDERS_METRICS_TOP_ORGS = int(_env("VLINDERS_METRICS_TOP_ORGS", "50"))
VLINDERS_METRICS_MONTH_CACHE_S = float(_env("VLINDERS_METRICS_MONTH_CACHE_S", "60"))
# The console's public address, for links in e-mails (invitations). Unset: built from the
# request's host (as trustworthy as ALLOWED_HOSTS); set it in production.
VLINDERS_CONSOLE_URL = _env("VLINDERS_CONSOLE_URL", "")
# The playground's short-lived credential (tenants/console_credentials.py): its lifetime, the
# time left below which it is renewed, and how long the console waits on the gateway's stream.
VLINDERS_CONSOLE_CREDENTIAL_TTL_S = int(_env("VLINDERS_CONSOLE_CREDENTIAL_TTL_S", "900"))
VLINDERS_CONSOLE_CREDENTIAL_MIN_LEFT_S = int(_env("VLINDERS_CONSOLE_CREDENTIAL_MIN_LEFT_S", "120"))
VLINDERS_CONSOLE_GATEWAY_READ_TIMEOUT_S = float(
    _env("VLINDERS_CONSOLE_GATEWAY_READ_TIMEOUT_S", "330")
)
# Days an invitation link works.
VLINDERS_INVITATION_TTL_DAYS = float(_env("VLINDERS_INVITATION_TTL_DAYS", "7"))
# The Celery queue usage events go to: a queue of their own, so metering workers can be scaled
# (and paused) apart from other tasks (docs/usage-events.md).
VLINDERS_USAGE_QUEUE = _env("VLINDERS_USAGE_QUEUE", "usage")
# Where `manage.py demo_models` prepares the demo models (SmolLM2 de-quantised from its GGUF).
VLINDERS_MODELS_DIR = Path(_env("VLINDERS_MODELS_DIR", str(VAR_DIR / "models")))
# Where the gateway spools usage batches while the Celery broker is unreachable.
VLINDERS_USAGE_SPOOL_DIR = Path(_env("VLINDERS_USAGE_SPOOL_DIR", str(VAR_DIR / "usage-spool")))
# Poll Ray Serve's status into ModelDeploymentStatus rows.
CELERY_BEAT_SCHEDULE["reconcile-deployments"] = {
    "task": "inference.reconcile_deployments",
    "schedule": 15.0,
}
# --- Replica-hours (inference/replica_hours.py; docs/billing.md, "Operator reports") ----------
# Each reconcile adds the replicas seen running times the seconds since the previous one, at most
# this many seconds (twice the reconcile interval): a reconciler that was down invents no hours.
VLINDERS_REPLICA_HOURS_MAX_GAP_S = float(_env("VLINDERS_REPLICA_HOURS_MAX_GAP_S", "30"))
# --- end of Replica-hours ------------------------------------------------------------------------
# Rewrite the upstream API keys' Redis records (encrypted) and drop stale ones: repairs a Redis
# that restarted empty (inference/upstream_secrets.py; every change is also published at once).
CELERY_BEAT_SCHEDULE["publish-upstream-credentials"] = {
    "task": "inference.publish_upstream_credentials",
    "schedule": float(_env("VLINDERS_UPSTREAM_CREDENTIALS_SECONDS", "60")),
}
# --- Scale to zero and scheduled scaling (docs/deployment-spec.md) -------------------------------
# Seconds a scale-to-zero model stays idle before its last replica stops (Serve's
# downscale_to_zero_delay_s; Serve would otherwise wait its downscale_delay_s, 600 s).
VLINDERS_SCALE_TO_ZERO_IDLE_S = float(_env("VLINDERS_SCALE_TO_ZERO_IDLE_S", "300"))
# Scaling windows (inference/scaling_schedule.py): every minute, each model's scheduled minimum
# replicas for the time of day (TIME_ZONE) is stored and, when one changed, the catalog applied.
CELERY_BEAT_SCHEDULE["apply-scaling-schedule"] = {
    "task": "inference.apply_scaling_schedule",
    "schedule": 60.0,
}
# --- end of Scale to zero and scheduled scaling ---------------------------------------------------
# --- end of Data plane ---------------------------------------------------------------------------

# --- Usage metering: the consumer of the usage queue (docs/metering.md) ---------------------------
# Workers consume the usage queue with `celery -A vlinders worker -Q celery,usage` (Procfile).
CELERY_TASK_ROUTES = {"billing.ingest_usage": {"queue": VLINDERS_USAGE_QUEUE}}
# A batch that meets a database error (outage, failover, deadlock) is retried with exponential
# backoff (2 s, 4 s, … capped at BACKOFF_MAX_S, with jitter) this many times, then dead-lettered.
VLINDERS_USAGE_INGEST_MAX_RETRIES = int(_env("VLINDERS_USAGE_INGEST_MAX_RETRIES", "8"))
VLINDERS_USAGE_INGEST_RETRY_BACKOFF_MAX_S = int(
    _env("VLINDERS_USAGE_INGEST_RETRY_BACKOFF_MAX_S", "300")
)
# --- end of Usage metering -----------------------------------------------------------------------

# --- Spend reconciliation, budget alerts, retention (docs/billing.md) ----------------------------
# Percentages of a monthly budget (spend or tokens, organisation or key) that send an alert.
VLINDERS_BUDGET_ALERT_THRESHOLDS = [
    int(t) for t in _env_list("VLINDERS_BUDGET_ALERT_THRESHOLDS", ["80", "100"])
]
# Raw usage events older than this are deleted (hourly rollups are kept for good).
VLINDERS_USAGE_RETENTION_DAYS = int(_env("VLINDERS_USAGE_RETENTION_DAYS", "90"))
# Pruning deletes at most BATCH_SIZE rows per statement and MAX_BATCHES statements per run.
VLINDERS_USAGE_PRUNE_BATCH_SIZE = int(_env("VLINDERS_USAGE_PRUNE_BATCH_SIZE", "5000"))
VLINDERS_USAGE_PRUNE_MAX_BATCHES = int(_env("VLINDERS_USAGE_PRUNE_MAX_BATCHES", "200"))
# Rewrite the gateway's Redis budget counters from Postgres (and check alerts) this often.
CELERY_BEAT_SCHEDULE["reconcile-spend"] = {
    "task": "billing.reconcile_spend",
    "schedule": float(_env("VLINDERS_SPEND_RECONCILE_SECONDS", "60")),
}
CELERY_BEAT_SCHEDULE["prune-usage-events"] = {
    "task": "billing.prune_usage_events",
    "schedule": float(_env("VLINDERS_USAGE_PRUNE_SECONDS", "3600")),
}
# --- end of Spend reconciliation -----------------------------------------------------------------

# --- Invoices (docs/billing.md, "Invoices") ------------------------------------------------------
# A month's invoices are finalised this long after it ends (UTC), so late usage events count.
VLINDERS_INVOICE_GRACE_S = int(_env("VLINDERS_INVOICE_GRACE_S", "3600"))
# Beat checks for a month due for finalisation this often (idempotent: finalised ones are skipped).
CELERY_BEAT_SCHEDULE["finalise-invoices"] = {
    "task": "billing.finalise_invoices",
    "schedule": float(_env("VLINDERS_INVOICE_FINALISE_SECONDS", "900")),
}
# --- end of Invoices -----------------------------------------------------------------------------

# --- Stripe and dunning (docs/billing.md, "Stripe" and "Dunning") --------------------------------
# Without a secret key nothing calls Stripe: invoices are still finalised and staff mark them paid.
STRIPE_SECRET_KEY = _env("STRIPE_SECRET_KEY", "")
# The webhook endpoint's signing secret (whsec_...): /stripe/webhook/ refuses events without it.
STRIPE_WEBHOOK_SECRET = _env("STRIPE_WEBHOOK_SECRET", "")
# Seconds a webhook's signed timestamp may be old (replays older than this are refused).
STRIPE_WEBHOOK_TOLERANCE_S = int(_env("STRIPE_WEBHOOK_TOLERANCE_S", "300"))
# Stripe's API address; the tests point it at their local test double.
STRIPE_API_BASE = _env("STRIPE_API_BASE", "https://api.stripe.com")
# Days a pushed invoice gives the organisation to pay on Stripe's hosted page.
STRIPE_INVOICE_DAYS_UNTIL_DUE = int(_env("STRIPE_INVOICE_DAYS_UNTIL_DUE", "14"))
# Top-ups of prepaid organisations through Stripe Checkout: bounds of one top-up (USD).
VLINDERS_TOPUP_MIN = _env("VLINDERS_TOPUP_MIN", "5.00")
VLINDERS_TOPUP_MAX = _env("VLINDERS_TOPUP_MAX", "10000.00")
# Seconds after a failed payment before the organisation's keys are suspended.
VLINDERS_DUNNING_GRACE_S = int(_env("VLINDERS_DUNNING_GRACE_S", str(7 * 24 * 3600)))
# Retry unpushed invoices and unprocessed webhook events; suspend past their grace.
CELERY_BEAT_SCHEDULE["stripe-push-invoices"] = {
    "task": "billing.stripe_push_pending",
    "schedule": float(_env("VLINDERS_STRIPE_RETRY_SECONDS", "300")),
}
CELERY_BEAT_SCHEDULE["stripe-process-events"] = {
    "task": "billing.stripe_process_pending_events",
    "schedule": float(_env("VLINDERS_STRIPE_RETRY_SECONDS", "300")),
}
CELERY_BEAT_SCHEDULE["dunning-suspend"] = {
    "task": "billing.dunning_suspend_due",
    "schedule": float(_env("VLINDERS_DUNNING_CHECK_SECONDS", "900")),
}
# --- end of Stripe and dunning -------------------------------------------------------------------

# --- Billing documents (docs/billing.md, "Documents") --------------------------------------------
# The seller on invoices and statements. The address is multi-line: separate lines with "\n".
VLINDERS_SELLER_NAME = _env("VLINDERS_SELLER_NAME", "Vlinders")
VLINDERS_SELLER_ADDRESS = _env(
    "VLINDERS_SELLER_ADDRESS", "Vlinders (demo)\\nKeizersgracht 1\\n1015 AA Amsterdam\\nNetherlands"
)
VLINDERS_SELLER_EMAIL = _env("VLINDERS_SELLER_EMAIL", "billing@vlinders.example")
VLINDERS_SELLER_TAX_ID = _env("VLINDERS_SELLER_TAX_ID", "")
# Tax on invoices (billing/tax.py; docs/billing.md "Tax"): none unless a rate is set.
VLINDERS_TAX_NAME = _env("VLINDERS_TAX_NAME", "")
VLINDERS_TAX_RATE_PERCENT = _env("VLINDERS_TAX_RATE_PERCENT", "")
# --- end of Billing documents --------------------------------------------------------------------

# --- Production: refuse to start with what a single machine would generate -----------------------
if PRODUCTION:
    if not os.environ.get("DATABASE_URL"):
        _MISSING_IN_PRODUCTION.append("DATABASE_URL")
    if not VLINDERS_RAY_AUTH_TOKEN:
        _MISSING_IN_PRODUCTION.append("VLINDERS_RAY_AUTH_TOKEN")
    if _MISSING_IN_PRODUCTION:
        raise ImproperlyConfigured(
            "VLINDERS_ENV=production, but these are not set in the environment: "
            f"{', '.join(_MISSING_IN_PRODUCTION)}. In production nothing is generated per host "
            "(each host would get a different value); set them, the same on every host "
            "(docs/operations.md, Production settings)."
        )
# --- end of Production ---------------------------------------------------------------------------
