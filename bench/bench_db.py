"""A throw-away Postgres database for a benchmark: created (dropped first if a previous run left
it), migrated and made Django's database, then dropped at the end. Shared by the benchmarks that
seed their own data, so each does not carry its own copy of these steps."""

from __future__ import annotations

import os
from urllib.parse import urlsplit, urlunsplit

import psycopg


def _admin_url(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/postgres", scheme="postgresql"))


def setup_database(name: str) -> None:
    """Create database ``name`` on the server of ``DATABASE_URL`` (default: the local one),
    point ``DATABASE_URL`` at it, set Django up and migrate. Postgres only."""
    base = os.environ.get("DATABASE_URL") or "postgres://postgres@127.0.0.1:5432/postgres"
    parts = urlsplit(base)
    if not parts.scheme.startswith("postgres"):
        raise SystemExit("the benchmark needs Postgres (DATABASE_URL=postgres://…)")
    with psycopg.connect(_admin_url(base), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name}")
    os.environ["DATABASE_URL"] = urlunsplit(parts._replace(path=f"/{name}"))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "vlinders.settings")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def drop_database(name: str) -> None:
    """Close Django's connections and drop database ``name``."""
    from django.db import connections

    connections.close_all()
    with psycopg.connect(_admin_url(os.environ["DATABASE_URL"]), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
