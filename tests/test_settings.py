"""Settings come from the environment with safe one-machine defaults (run in a fresh process)."""

import json
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

ROOT = Path(__file__).resolve().parent.parent

PROBE = """
import json, django
from django.conf import settings
django.setup()
db = settings.DATABASES["default"]
print(json.dumps({
    "engine": db["ENGINE"], "name": str(db["NAME"]), "debug": settings.DEBUG,
    "hosts": settings.ALLOWED_HOSTS, "redis": settings.REDIS_URL,
    "broker": settings.CELERY_BROKER_URL, "prefix": settings.VLINDERS_REDIS_PREFIX,
    "secret": settings.SECRET_KEY, "pepper": settings.VLINDERS_KEY_PEPPER,
    "secrets_key": settings.VLINDERS_SECRETS_KEY, "ssl_redirect": settings.SECURE_SSL_REDIRECT,
    "hsts": settings.SECURE_HSTS_SECONDS, "db_options": db.get("OPTIONS", {}),
}))
"""


# Variables that would leak from the developer's environment into the probe.
_OURS = re.compile(
    r"^(DATABASE_URL|REDIS_URL|DEBUG|ALLOWED_HOSTS|CSRF_TRUSTED_ORIGINS|SECRET_KEY|"
    r"CELERY_BROKER_URL|VLINDERS_.*|RAY_AUTH_TOKEN.*|SECURE_.*)$"
)


def _environment(tmp_path, **env):
    clean = {k: v for k, v in os.environ.items() if not _OURS.match(k)}
    clean |= {
        "DJANGO_SETTINGS_MODULE": "vlinders.settings",
        "VLINDERS_VAR_DIR": str(tmp_path),
        "HOME": str(tmp_path),  # no ~/.ray/auth_token of the machine's
    }
    return clean | env


def _run(tmp_path, argv, **env):
    return subprocess.run(
        argv, cwd=ROOT, env=_environment(tmp_path, **env), capture_output=True, text=True
    )


def _settings(tmp_path, **env):
    out = _run(tmp_path, [sys.executable, "-c", PROBE], **env)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_defaults_are_safe_for_one_machine(tmp_path):
    first = _settings(tmp_path)
    assert first["engine"] == "django.db.backends.sqlite3"
    assert first["name"] == str(tmp_path / "vlinders.sqlite3")
    assert first["debug"] is False
    assert first["redis"] == "redis://127.0.0.1:6379/0"
    assert first["broker"] == first["redis"]
    assert first["prefix"] == "vl:"
    # Several processes write the one-machine SQLite file: WAL, write lock taken up front.
    assert first["db_options"]["transaction_mode"] == "IMMEDIATE"
    assert "journal_mode=WAL" in first["db_options"]["init_command"]
    # Generated secrets are kept (a restart must not log everyone out or break every key)...
    assert first["secret"]
    assert first["pepper"]
    assert first["secret"] != first["pepper"]
    assert _settings(tmp_path)["pepper"] == first["pepper"]
    # The encryption key of upstream API keys is a Fernet key, kept like the others.
    Fernet(first["secrets_key"])
    assert _settings(tmp_path)["secrets_key"] == first["secrets_key"]
    assert (tmp_path / "vlinders_secrets_key.secret").stat().st_mode & 0o077 == 0
    # Plain HTTP on one machine: no redirect, no HSTS.
    assert (first["ssl_redirect"], first["hsts"]) == (False, 0)
    # ...and readable by the platform's user only.
    assert (tmp_path / "vlinders_key_pepper.secret").stat().st_mode & 0o077 == 0


def test_environment_overrides_and_empty_means_default(tmp_path):
    got = _settings(
        tmp_path,
        DATABASE_URL="postgres://u:p@db.internal:5432/prod",
        REDIS_URL="redis://cache:6379/2",
        DEBUG="true",
        ALLOWED_HOSTS="api.example.com, console.example.com",
        SECRET_KEY="s" * 50,
        VLINDERS_KEY_PEPPER="pepper",
        CELERY_BROKER_URL="",
        VLINDERS_REDIS_PREFIX="",
    )
    assert got["engine"] == "django.db.backends.postgresql"
    assert got["name"] == "prod"
    assert got["debug"] is True
    assert got["hosts"] == ["api.example.com", "console.example.com"]
    assert got["broker"] == "redis://cache:6379/2"
    assert got["prefix"] == "vl:"
    assert (got["secret"], got["pepper"]) == ("s" * 50, "pepper")
    assert not (tmp_path / "secret_key.secret").exists()


# --- production -----------------------------------------------------------------------------


def _documented_production_environment() -> dict[str, str]:
    """The block under "Production settings" in docs/operations.md, with each ``<placeholder>``
    filled in as the comment above it says (a Fernet key for VLINDERS_SECRETS_KEY)."""
    text = (ROOT / "docs" / "operations.md").read_text()
    section = text[text.index("## Production settings") :]
    start = section.index("```sh\n") + len("```sh\n")
    block = section[start : section.index("\n```", start)]
    env = {}
    for line in block.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.partition("=")
        fill = (
            Fernet.generate_key().decode()
            if name == "VLINDERS_SECRETS_KEY"
            else secrets.token_urlsafe(50)
        )
        env[name] = re.sub(r"<[^>]+>", fill, value)
    return env


PRODUCTION = _documented_production_environment()
REQUIRED_IN_PRODUCTION = [
    "SECRET_KEY",
    "VLINDERS_KEY_PEPPER",
    "VLINDERS_METRICS_TOKEN",
    "VLINDERS_SECRETS_KEY",
    "DATABASE_URL",
    "VLINDERS_RAY_AUTH_TOKEN",
]


def test_the_documented_production_settings_pass_check_deploy(tmp_path):
    assert PRODUCTION["VLINDERS_ENV"] == "production"
    assert set(REQUIRED_IN_PRODUCTION) <= set(PRODUCTION)
    out = _run(
        tmp_path,
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        **PRODUCTION,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "System check identified no issues" in out.stdout
    assert "WARNING" not in out.stdout + out.stderr
    assert list(tmp_path.glob("*.secret")) == []  # nothing was generated on this host


def test_one_machine_settings_do_not_pass_check_deploy(tmp_path):
    """The check above can fail: the development defaults (plain HTTP) are flagged."""
    out = _run(
        tmp_path,
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
    )
    assert out.returncode != 0
    assert "security.W008" in out.stderr + out.stdout  # SECURE_SSL_REDIRECT


@pytest.mark.parametrize("missing", REQUIRED_IN_PRODUCTION)
def test_production_refuses_to_start_without_a_secret(tmp_path, missing):
    env = {name: value for name, value in PRODUCTION.items() if name != missing}
    out = _run(tmp_path, [sys.executable, "manage.py", "check"], **env)
    assert out.returncode != 0
    assert "ImproperlyConfigured" in out.stderr
    assert f"these are not set in the environment: {missing}." in out.stderr
    assert list(tmp_path.glob("*.secret")) == []


def test_production_names_every_missing_variable_at_once(tmp_path):
    out = _run(tmp_path, [sys.executable, "manage.py", "check"], VLINDERS_ENV="production")
    assert out.returncode != 0
    assert ", ".join(REQUIRED_IN_PRODUCTION) in out.stderr


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DEBUG": "true"}, "DEBUG must be off when VLINDERS_ENV=production"),
        ({"VLINDERS_ENV": "prod"}, "VLINDERS_ENV must be 'development' or 'production'"),
        ({"VLINDERS_SECRETS_KEY": "not-a-fernet-key"}, "must be comma-separated Fernet keys"),
    ],
)
def test_inconsistent_settings_are_refused(tmp_path, env, message):
    out = _run(tmp_path, [sys.executable, "manage.py", "check"], **(PRODUCTION | env))
    assert out.returncode != 0
    assert message in out.stderr


def test_several_secrets_keys_are_accepted_for_rotation(tmp_path):
    keys = f"{Fernet.generate_key().decode()}, {Fernet.generate_key().decode()}"
    got = _settings(tmp_path, **(PRODUCTION | {"VLINDERS_SECRETS_KEY": keys}))
    assert got["secrets_key"] == keys.replace(" ", "")
    assert got["ssl_redirect"] is True
    assert got["hsts"] == 31536000
