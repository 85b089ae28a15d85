"""Ingest usage events: exactly-once accounting from at-least-once delivery (contract 4).

:func:`ingest_events` is the one way events enter billing — the Celery task, dead-letter replay
and tests all go through it. For one batch, in ONE database transaction:

1. every event is validated (``billing.events``); invalid ones (a malformed event, an unknown
   schema) are parked in a :class:`~billing.models.DeadLetterBatch` with the reason, and the rest
   go on — one bad event never poisons its batch;
2. request ids repeated inside the batch are dropped (the first one counts);
3. events are inserted with ``ON CONFLICT (request_id) DO NOTHING RETURNING request_id``, which
   tells exactly which ones are new (``billing.ingest_sql``);
4. only those new events are added to the hourly rollups (one upsert row per group: organisation,
   hour, key, served model and the two prices the events were served at, ``NULL`` for events
   that carried none).

Since the events and their rollup increments commit together, and an event can be inserted only
once, a redelivered batch (same or overlapping) adds nothing: either the first delivery committed
(its events are found, nothing is added) or it did not (nothing of it is visible, it is done now).
Costs stay ``Decimal`` from the event's string to the ``numeric`` column.

After the commit, :func:`notify_after_batch` hands what changed to ``billing.post_ingest``.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from django.db import transaction
from django.utils import timezone

from billing import fault_points, post_ingest
from billing.dead_letters import dead_letter_park
from billing.events import UsageRecord, describe_rejects, parse_batch
from billing.ingest_result import IngestResult, Totals
from billing.ingest_sql import RollupKey, insert_events, upsert_rollups
from billing.models import DeadLetterBatch
from inference.serving.money import to_micros
from tenants.audit import audit_record

logger = logging.getLogger(__name__)


def _add(totals: Totals, record: UsageRecord) -> None:
    totals.requests += 1
    totals.errors += record.is_error
    totals.prompt_tokens += record.prompt_tokens
    totals.completion_tokens += record.completion_tokens
    totals.cached_tokens += record.cached_tokens
    totals.cost += record.cost


def store_records(records: Sequence[UsageRecord]) -> IngestResult:
    """Insert ``records`` and add the newly inserted ones to the rollups. Must run inside a
    transaction (the two writes are only exactly-once together).

    ``received`` counts the valid records given (duplicates included), ``inserted`` the ones
    that were new; ``by_org``, ``keys`` and ``months`` describe only the new ones.
    """
    unique: dict[str, UsageRecord] = {}
    for record in records:
        unique.setdefault(record.request_id, record)
    result = IngestResult(received=len(records))
    if not unique:
        return result
    inserted_ids = insert_events(list(unique.values()), timezone.now())
    groups: dict[RollupKey, Totals] = {}
    for request_id in inserted_ids:
        record = unique[request_id]
        key = (
            record.org_id,
            record.hour,
            record.key_id,
            record.rollup_model,
            record.price_input_per_mtok,
            record.price_output_per_mtok,
        )
        _add(groups.setdefault(key, Totals()), record)
        org = str(record.org_id)
        _add(result.by_org.setdefault(org, Totals()), record)
        result.keys.add((org, str(record.key_id)))
        result.months.add(record.month)
        tokens, micros = record.prompt_tokens + record.completion_tokens, to_micros(record.cost)
        for counter in (("org", org, record.month), ("key", str(record.key_id), record.month)):
            counts = result.ingested.setdefault(counter, [0, 0])
            counts[0] += tokens
            counts[1] += micros
        hour = (org, record.hour)
        result.ingested_hours[hour] = result.ingested_hours.get(hour, 0) + micros
    upsert_rollups(groups)
    result.inserted = len(inserted_ids)
    return result


def ingest_events(events: Sequence[object], *, task_id: str = "") -> IngestResult:
    """Ingest one batch of raw usage events, exactly once per request id (see the module doc).

    Invalid events are parked in a dead letter (one per batch, idempotent on ``task_id``) inside
    the same transaction. Database errors propagate with nothing written: the caller retries the
    whole batch, which is safe. Does not run the post-commit steps (:func:`notify_after_batch`).
    """
    records, rejected = parse_batch(events)
    with transaction.atomic():
        result = store_records(records)
        if rejected:
            dead_letter_park(
                events=[item.raw for item in rejected],
                task_id=task_id,
                error=describe_rejects(rejected),
                attempts=1,
            )
        fault_points.pause("before_commit")
    if result.received != result.inserted or rejected:
        logger.info(
            "usage batch %s: %d events, %d new, %d duplicates, %d invalid",
            task_id or "-",
            len(events),
            result.inserted,
            result.duplicates,
            len(rejected),
        )
    return result


def notify_after_batch(result: IngestResult) -> None:
    """Run the post-commit steps for a committed batch that inserted something. Never raises:
    the batch is committed and must not be retried because a follow-up step failed (each step
    is repeated by the beat schedule anyway)."""
    if not result.inserted:
        return
    try:
        post_ingest.after_batch(result)
    except Exception:
        logger.exception("post-ingest steps failed for a committed usage batch (not retried)")


@dataclass(slots=True)
class ReplayOutcome:
    """What replaying one dead letter did. ``still_invalid`` events stay in the dead letter,
    which then stays pending with the reasons; otherwise it is marked replayed."""

    dead_letter_id: uuid.UUID
    result: IngestResult = field(default_factory=IngestResult)
    still_invalid: int = 0
    already_replayed: bool = False

    @property
    def replayed(self) -> bool:
        return not self.already_replayed and not self.still_invalid


def dead_letter_replay(*, dead_letter_id: uuid.UUID, actor: Any = None) -> ReplayOutcome:
    """Ingest a dead letter's events through :func:`store_records`, in one transaction with
    the update of the dead letter itself (locked, so two operators cannot replay it at once).

    Idempotent: events already ingested count as duplicates, a replayed dead letter is left
    alone. Events that are still invalid replace the dead letter's events (the valid ones are
    in), with the reasons as its error, and it stays pending for an operator to fix or discard.
    Database errors propagate with nothing changed. A replay that did something is audited
    (``dead_letter.replayed``, platform-level) in the same transaction, with ``actor`` (the
    operator; ``None`` for the system, e.g. the management command).
    """
    outcome = ReplayOutcome(dead_letter_id=dead_letter_id)
    with transaction.atomic():
        dead_letter = DeadLetterBatch.objects.select_for_update().get(pk=dead_letter_id)
        if dead_letter.status == DeadLetterBatch.Status.REPLAYED:
            outcome.already_replayed = True
            return outcome
        before = {"status": dead_letter.status, "attempts": dead_letter.attempts}
        raw = dead_letter.events
        records, rejected = parse_batch(raw if isinstance(raw, list) else [raw])
        outcome.result = store_records(records)
        outcome.still_invalid = len(rejected)
        dead_letter.attempts += 1
        if rejected:
            dead_letter.events = [item.raw for item in rejected]
            dead_letter.error = describe_rejects(rejected)
        else:
            dead_letter.status = DeadLetterBatch.Status.REPLAYED
            dead_letter.replayed_at = dt.datetime.now(dt.UTC)
        dead_letter.save(update_fields=["events", "error", "attempts", "status", "replayed_at"])
        audit_record(
            organization=None,
            actor=actor,
            action="dead_letter.replayed",
            target=dead_letter,
            before=before,
            after={
                "status": dead_letter.status,
                "attempts": dead_letter.attempts,
                "inserted": outcome.result.inserted,
                "duplicates": outcome.result.duplicates,
                "still_invalid": outcome.still_invalid,
            },
        )
    notify_after_batch(outcome.result)
    return outcome
