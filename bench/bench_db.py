"""A throw-away Postgres database for a benchmark: created (dropped first if a previous run left
it), migrated and made Django's database, then dropped at the end; and the organisations, keys
and hourly rollups the billing benchmarks seed into it. Shared by the benchmarks that seed their
own data, so each does not carry its own copy of these steps."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import psycopg

if TYPE_CHECKING:
    from tenants.models import Organization


def _admin_url(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/postgres", scheme="postgresql"))


def setup_database(name: str, *, fresh: bool = True) -> str:
    """Create database ``name`` on the server of ``DATABASE_URL`` (default: the local one),
    point ``DATABASE_URL`` at it, set Django up and migrate; returns its URL. Postgres only.
    With ``fresh=False`` a database left by an earlier run is kept (and migrated)."""
    base = os.environ.get("DATABASE_URL") or "postgres://postgres@127.0.0.1:5432/postgres"
    parts = urlsplit(base)
    if not parts.scheme.startswith("postgres"):
        raise SystemExit("the benchmark needs Postgres (DATABASE_URL=postgres://…)")
    with psycopg.connect(_admin_url(base), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if fresh or not exists:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            conn.execute(f"CREATE DATABASE {name}")
    url = urlunsplit(parts._replace(path=f"/{name}"))
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "vlinders.settings")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    return url


def drop_database(name: str) -> None:
    """Close Django's connections and drop database ``name``."""
    from django.db import connections

    connections.close_all()
    with psycopg.connect(_admin_url(os.environ["DATABASE_URL"]), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@contextmanager
def throwaway_database(name: str, *, fresh: bool = True, keep: bool = False) -> Iterator[str]:
    """``setup_database`` for the block (yields the URL), then ``drop_database`` unless
    ``keep``: also when the block or the migration failed, once ``DATABASE_URL`` names it."""
    try:
        yield setup_database(name, fresh=fresh)
    finally:
        if not keep and os.environ.get("DATABASE_URL", "").endswith(f"/{name}"):
            drop_database(name)


def seed_organizations(count: int, keys: int, created: datetime) -> list[Organization]:
    """``count`` organisations (every third on the premium plan) with ``keys`` keys each."""
    import uuid

    from tenants.models import ApiKey, Organization

    organizations = Organization.objects.bulk_create(
        Organization(
            name=f"Org {i}",
            slug=f"org-{i}",
            plan="premium" if i % 3 == 0 else "standard",
            created_at=created,
        )
        for i in range(count)
    )
    ApiKey.objects.bulk_create(
        ApiKey(
            organization=org,
            name=f"key {k}",
            prefix=uuid.uuid4().hex[:16],
            last_four="abcd",
            secret_hash=uuid.uuid4().hex * 2,
        )
        for org in organizations
        for k in range(keys)
    )
    return organizations


def seed_rollups(first: datetime, hours: int, models: int) -> int:
    """A rollup row per key, hour (``hours`` from ``first``) and model (``model-1`` …), with
    exact 12-decimal costs, in one SQL statement; returns the number of rows."""
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute(
            """
            INSERT INTO billing_usagerollup
              (hour, organization_id, api_key_id, model, requests, errors, prompt_tokens,
               completion_tokens, cached_tokens, cost)
            SELECT %s::timestamptz + make_interval(hours => h),
                   k.organization_id, k.id, 'model-' || m, 10 + h %% 7, h %% 2,
                   1000 * (1 + h %% 13), 300 * (1 + h %% 5), 100,
                   ((1000 * (1 + h %% 13)) * 0.123457 + (300 * (1 + h %% 5)) * 0.987654)
                     / 1000000.0 + m * 0.000000000001
            FROM tenants_apikey k, generate_series(0, %s - 1) AS h, generate_series(1, %s) AS m
            """,
            [first, hours, models],
        )
        return int(cur.rowcount)
