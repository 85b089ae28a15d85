"""Retention of raw usage events: delete those older than ``VLINDERS_USAGE_RETENTION_DAYS``.

The hourly rollups are kept: every report, budget and the usage API read them, never raw events.
Deleting is done in bounded batches (a primary-key subquery of the oldest rows, ``LIMIT`` n) so no
single statement holds locks or fills the WAL for long, with a cap on batches per run so one run
of the beat task stays short; the next run continues where this one stopped.

Trade-off to know: ingestion is idempotent on the event's ``request_id`` only while the event is
kept, so an event redelivered after its retention period would be counted again. The emitter's
spool replays within minutes or hours, far inside any sensible retention.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from billing.models import UsageEvent


@dataclass(frozen=True, slots=True)
class PruneResult:
    deleted: int
    batches: int
    cutoff: datetime
    finished: bool  # False when the cap stopped it with old rows left


def prune_usage_events(
    *,
    now: datetime | None = None,
    retention_days: int | None = None,
    batch_size: int | None = None,
    max_batches: int | None = None,
) -> PruneResult:
    """Delete events whose ``started_at`` is older than the retention period, oldest first, at
    most ``batch_size`` per statement and ``max_batches`` statements. Arguments default to the
    settings; a retention of 0 days or less is refused (it would delete today's events)."""
    days = settings.VLINDERS_USAGE_RETENTION_DAYS if retention_days is None else retention_days
    size = settings.VLINDERS_USAGE_PRUNE_BATCH_SIZE if batch_size is None else batch_size
    cap = settings.VLINDERS_USAGE_PRUNE_MAX_BATCHES if max_batches is None else max_batches
    if days < 1:
        raise ValueError("the usage retention must be at least one day")
    if size < 1 or cap < 1:
        raise ValueError("batch_size and max_batches must be positive")
    cutoff = (now or timezone.now()) - timedelta(days=days)
    old = UsageEvent.objects.filter(started_at__lt=cutoff)
    deleted = batches = 0
    while batches < cap:
        oldest = old.order_by("started_at").values("pk")[:size]
        count, _ = UsageEvent.objects.filter(pk__in=oldest).delete()
        batches += 1
        deleted += count
        if count < size:
            return PruneResult(deleted, batches, cutoff, finished=True)
    return PruneResult(deleted, batches, cutoff, finished=not old.exists())
