"""The two statements of ingest, written for speed and for exactness.

* :func:`insert_events` — multi-row ``INSERT … ON CONFLICT (request_id) DO NOTHING RETURNING
  request_id``: one statement per chunk of events, and the database itself says which rows it
  inserted (an event already stored, by an earlier delivery or by a concurrent worker, is simply
  not returned). That set, not the batch, is what the rollups get.
* :func:`upsert_rollups` — multi-row ``INSERT … ON CONFLICT (organization_id, hour, api_key_id,
  model) DO UPDATE SET col = col + excluded.col``: one row per distinct group, added to whatever
  is there.

Both must run inside the caller's transaction. Rows are written in a fixed order (events by
request id, groups by key) so that two workers ingesting overlapping batches take their row locks
in the same order and wait for each other instead of deadlocking. Both statements are standard
``INSERT … ON CONFLICT`` with ``RETURNING``: Postgres, and SQLite 3.35 or later.

Values go through each field's ``get_db_prep_save`` so that every backend gets the types it
expects (UUIDs, aware datetimes, exact decimals).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from django.db import connection
from django.db.models import Field, Model

from billing.events import UsageRecord
from billing.ingest_result import Totals
from billing.models import UsageEvent, UsageRollup

# (organization id, hour, api key id, rollup model)
RollupKey = tuple[uuid.UUID, dt.datetime, uuid.UUID, str]

EVENT_FIELDS = (
    "request_id",
    "organization",
    "api_key",
    "model",
    "served_model",
    "endpoint",
    "stream",
    "status",
    "error_type",
    "finish_reason",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "cost",
    "latency_ms",
    "ttft_ms",
    "started_at",
    "http_request_id",
    "received_at",
)
ROLLUP_KEY_FIELDS = ("organization", "hour", "api_key", "model")
ROLLUP_SUM_FIELDS = (
    "requests",
    "errors",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "cost",
)
# Rows per statement: far below Postgres's 65,535 bind parameters, and within what Django says
# the backend accepts (SQLite's limit).
MAX_ROWS_PER_STATEMENT = 1000


def _fields(model: type[Model], names: Sequence[str]) -> list[Field[Any, Any]]:
    return [model._meta.get_field(name) for name in names]  # type: ignore[misc]


def _chunks(rows: Sequence[Any], columns: int) -> Iterator[Sequence[Any]]:
    limit = connection.features.max_query_params or 65_535
    size = max(1, min(MAX_ROWS_PER_STATEMENT, limit // columns))
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def _preparers(fields: Sequence[Field[Any, Any]]) -> list[Callable[[Any], Any]]:
    def preparer(field: Field[Any, Any]) -> Callable[[Any], Any]:
        return lambda value: field.get_db_prep_save(value, connection)

    return [preparer(field) for field in fields]


def _insert_sql(table: str, columns: list[str], rows: int, tail: str) -> str:
    """``INSERT INTO table (columns) VALUES (%s, …), … tail``. Every name comes from the model's
    metadata, quoted by the backend; every value is a bind parameter."""
    row = "(" + ", ".join(["%s"] * len(columns)) + ")"
    values = ", ".join([row] * rows)
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES {values} {tail}"  # noqa: S608


def insert_events(records: Sequence[UsageRecord], received_at: dt.datetime) -> set[str]:
    """Insert ``records`` (distinct request ids), skipping ids already stored; return the ids
    this call inserted."""
    fields = _fields(UsageEvent, EVENT_FIELDS)
    prepare = _preparers(fields)
    quote = connection.ops.quote_name
    table = quote(UsageEvent._meta.db_table)
    columns = [quote(field.column) for field in fields]
    pk = quote(UsageEvent._meta.get_field("request_id").column)
    inserted: set[str] = set()
    ordered = sorted(records, key=lambda record: record.request_id)
    with connection.cursor() as cursor:
        for chunk in _chunks(ordered, len(fields)):
            params: list[Any] = []
            for record in chunk:
                row = (
                    record.request_id,
                    record.org_id,
                    record.key_id,
                    record.model,
                    record.served_model,
                    record.endpoint,
                    record.stream,
                    record.status,
                    record.error_type,
                    record.finish_reason,
                    record.prompt_tokens,
                    record.completion_tokens,
                    record.cached_tokens,
                    record.cost,
                    record.latency_ms,
                    record.ttft_ms,
                    record.started_at,
                    record.http_request_id,
                    received_at,
                )
                params.extend(prep(value) for prep, value in zip(prepare, row, strict=True))
            tail = f"ON CONFLICT ({pk}) DO NOTHING RETURNING {pk}"
            cursor.execute(_insert_sql(table, columns, len(chunk), tail), params)
            inserted.update(row[0] for row in cursor.fetchall())
    return inserted


def upsert_rollups(groups: dict[RollupKey, Totals]) -> None:
    """Add each group's totals to its hourly rollup row, creating the row if needed."""
    if not groups:
        return
    key_fields = _fields(UsageRollup, ROLLUP_KEY_FIELDS)
    sum_fields = _fields(UsageRollup, ROLLUP_SUM_FIELDS)
    fields = key_fields + sum_fields
    prepare = _preparers(fields)
    quote = connection.ops.quote_name
    table = quote(UsageRollup._meta.db_table)
    columns = [quote(field.column) for field in fields]
    conflict = ", ".join(quote(field.column) for field in key_fields)
    updates = ", ".join(
        f"{quote(field.column)} = {table}.{quote(field.column)} + EXCLUDED.{quote(field.column)}"
        for field in sum_fields
    )
    ordered = sorted(
        groups.items(), key=lambda item: (str(item[0][0]), item[0][1], str(item[0][2]), item[0][3])
    )
    with connection.cursor() as cursor:
        for chunk in _chunks(ordered, len(fields)):
            params: list[Any] = []
            for (org_id, hour, key_id, model), totals in chunk:
                row = (
                    org_id,
                    hour,
                    key_id,
                    model,
                    totals.requests,
                    totals.errors,
                    totals.prompt_tokens,
                    totals.completion_tokens,
                    totals.cached_tokens,
                    totals.cost,
                )
                params.extend(prep(value) for prep, value in zip(prepare, row, strict=True))
            tail = f"ON CONFLICT ({conflict}) DO UPDATE SET {updates}"
            cursor.execute(_insert_sql(table, columns, len(chunk), tail), params)
