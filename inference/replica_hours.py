"""Replica-hours: how long each catalog model's replicas ran, per UTC hour (``ReplicaHours``), the
operator's cost in the margin report (``billing.reports``, docs/billing.md "Operator reports").

The deployment reconciler (``inference.deploy_services.deployment_reconcile``, every 15 s)
observes how many replicas Ray Serve reports ``RUNNING`` per model. Each observation adds
``previous replicas_running x seconds since the previous observation`` to the hours that
interval covers (split at hour boundaries): sample and hold, the count seen last is taken to have
held until the next look.

The previous observation is the model's ``ModelDeploymentStatus`` row as it was before the
reconciler rewrites it: ``updated_at`` (``auto_now``: the time of the last observation, written
by every reconcile, as every reconcile saves every model's row) and ``replicas_running``. No
other state is needed (no schema change, no Redis). The reconciler locks the row
(``SELECT … FOR UPDATE``) before reading it, in the transaction that rewrites it, so two
reconcilers running at once (a beat run twice, the command next to beat) cannot both count the
same interval: the second waits, then reads the first one's observation and adds only the
seconds between the two.

Bounds:

- an interval is capped at ``VLINDERS_REPLICA_HOURS_MAX_GAP_S`` (default 30 s, twice the
  reconcile interval): a reconciler that was down for an hour does not invent an hour of
  replicas it never saw; the uncounted rest is logged;
- a row last written by anything other than the reconciler also moves ``updated_at``, which only
  shortens the next interval (never counts time twice);
- while Ray's dashboard is unreachable the row says ``unknown`` with 0 replicas: the interval up
  to the first failed look is counted at the last seen count, the time after it not at all (cost
  understated, never invented);
- a model's first observation (no row yet) adds nothing.

Increments are one ``INSERT … ON CONFLICT DO UPDATE SET replica_seconds = replica_seconds +
EXCLUDED.replica_seconds`` per hour touched: atomic, no read-modify-write race.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection

from inference.models import ModelDeploymentStatus, ReplicaHours

logger = logging.getLogger(__name__)

HOUR = timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class Observation:
    """What the reconciler saw of a model at ``at``: ``replicas`` running."""

    at: datetime
    replicas: int


def previous_observations() -> dict[Any, Observation]:
    """Every model's last observation by catalog model id, the status rows locked until the
    transaction ends (call it inside the reconciler's transaction, before the rows are
    rewritten; locked in one statement, in id order, so two reconcilers cannot deadlock)."""
    rows = (
        ModelDeploymentStatus.objects.select_for_update()
        .order_by("catalog_model_id")
        .values_list("catalog_model_id", "updated_at", "replicas_running")
    )
    return {model_id: Observation(at=at, replicas=replicas) for model_id, at, replicas in rows}


def hour_start(at: datetime) -> datetime:
    return at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def split_by_hour(start: datetime, end: datetime) -> list[tuple[datetime, float]]:
    """``[start, end)`` cut at UTC hour boundaries: (hour start, seconds in that hour), in order;
    empty when ``end <= start``."""
    pieces = []
    at = start
    while at < end:
        hour = hour_start(at)
        stop = min(hour + HOUR, end)
        pieces.append((hour, (stop - at).total_seconds()))
        at = stop
    return pieces


def max_gap_s() -> float:
    return float(settings.VLINDERS_REPLICA_HOURS_MAX_GAP_S)


def accumulate(
    *, model_id: Any, previous: Observation | None, now: datetime
) -> list[tuple[datetime, float]]:
    """Add ``previous.replicas x (now - previous.at)`` replica-seconds (the interval capped at
    ``VLINDERS_REPLICA_HOURS_MAX_GAP_S``, ending at ``now``) to the model's hours; return what
    was added per hour. Nothing without a previous observation, with 0 replicas, or when ``now``
    is not after it."""
    if previous is None or previous.replicas <= 0 or now <= previous.at:
        return []
    start = previous.at
    cap = timedelta(seconds=max_gap_s())
    if now - start > cap:
        logger.info(
            "Replica-hours: %s s without an observation of model %s; counting the last %s s",
            round((now - start).total_seconds()),
            model_id,
            cap.total_seconds(),
        )
        start = now - cap
    added = [(hour, seconds * previous.replicas) for hour, seconds in split_by_hour(start, now)]
    _increment(model_id, added)
    return added


def _increment(model_id: Any, added: list[tuple[datetime, float]]) -> None:
    if not added:
        return
    table = connection.ops.quote_name(ReplicaHours._meta.db_table)
    values = ", ".join(["(%s, %s, %s)"] * len(added))
    # Raw SQL gets values as the database takes them (SQLite binds neither a UUID nor an aware
    # datetime): each field converts its own, as the ORM would.
    model_field = ReplicaHours._meta.get_field("catalog_model").target_field
    hour_field = ReplicaHours._meta.get_field("hour")
    model_value = model_field.get_db_prep_value(model_id, connection)
    params: list[Any] = []
    for hour, seconds in added:
        params += [model_value, hour_field.get_db_prep_value(hour, connection), seconds]
    # Only the quoted table name and placeholders are interpolated; the values are parameters.
    sql = (
        f"INSERT INTO {table} (catalog_model_id, hour, replica_seconds) VALUES {values} "  # noqa: S608
        "ON CONFLICT (catalog_model_id, hour) DO UPDATE "
        f"SET replica_seconds = {table}.replica_seconds + EXCLUDED.replica_seconds"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
