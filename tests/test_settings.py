"""Settings come from the environment with safe one-machine defaults (run in a fresh process)."""

import json
import os
import subprocess
import sys
from pathlib import Path

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
}))
"""


def _settings(tmp_path, **env):
    clean = {
        k: v
        for k, v in os.environ.items()
        if k
        not in {
            "DATABASE_URL",
            "REDIS_URL",
            "DEBUG",
            "ALLOWED_HOSTS",
            "SECRET_KEY",
            "VLINDERS_KEY_PEPPER",
            "CELERY_BROKER_URL",
            "VLINDERS_REDIS_PREFIX",
        }
    }
    clean |= {"DJANGO_SETTINGS_MODULE": "vlinders.settings", "VLINDERS_VAR_DIR": str(tmp_path)}
    clean |= env
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=ROOT,
        env=clean,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


def test_defaults_are_safe_for_one_machine(tmp_path):
    first = _settings(tmp_path)
    assert first["engine"] == "django.db.backends.sqlite3"
    assert first["name"] == str(tmp_path / "vlinders.sqlite3")
    assert first["debug"] is False
    assert first["redis"] == "redis://127.0.0.1:6379/0"
    assert first["broker"] == first["redis"]
    assert first["prefix"] == "vl:"
    # Generated secrets are kept (a restart must not log everyone out or break every key)...
    assert first["secret"]
    assert first["pepper"]
    assert first["secret"] != first["pepper"]
    assert _settings(tmp_path)["pepper"] == first["pepper"]
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
