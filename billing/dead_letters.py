"""Dead letters: usage events that could not be ingested, kept so that nothing is ever dropped.

Two things end up here: the *invalid events* of a batch (parked by ingest in the same transaction
that stores the valid ones), and a *whole batch* whose ingest failed for good (retries exhausted,
or an error no retry can fix). An operator inspects them in the admin and replays them with
``manage.py usage_dead_letters replay`` or the admin action; replay goes through the same ingest
(``billing.ingest.dead_letter_replay``), so replaying twice counts nothing twice.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from billing.models import DeadLetterBatch

logger = logging.getLogger(__name__)


def jsonable(value: Any) -> Any:
    """``value`` made storable in a Postgres ``jsonb``: non-finite floats become strings and NUL
    characters are escaped (``jsonb`` refuses both, and a dead letter must never fail to be
    written because of the very data that made its batch fail)."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, str):
        return value.replace("\x00", "\\u0000")
    if isinstance(value, dict):
        return {jsonable(str(key)): jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(item) for item in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    return repr(value)


def dead_letter_park(*, events: Any, task_id: str, error: str, attempts: int) -> DeadLetterBatch:
    """Keep ``events`` (a batch, or the invalid part of one) for an operator.

    Idempotent per Celery task id: a message redelivered after its dead letter was committed (the
    worker died before acknowledging) finds the existing row instead of parking a second copy.
    Call it inside the transaction that decides the batch's fate when there is one.
    """
    if task_id:
        existing = DeadLetterBatch.objects.filter(task_id=task_id).first()
        if existing is not None:
            return existing
    dead_letter = DeadLetterBatch.objects.create(
        task_id=task_id, events=jsonable(events), error=error[:10_000], attempts=attempts
    )
    count = len(events) if isinstance(events, list) else 1
    logger.warning(
        "usage dead letter %s: %d events parked (task %s): %s",
        dead_letter.pk,
        count,
        task_id or "-",
        error.splitlines()[0] if error else "",
    )
    return dead_letter


# --- what an operator sees of a dead letter (the console's /staff/dead-letters/) -------------
INVALID_EVENTS_HEADER = "invalid usage events:"


def dead_letter_size(events: Any) -> int:
    """How many events a dead letter holds (a message that was not even a list counts as one)."""
    return len(events) if isinstance(events, list) else 1


def dead_letter_reason(error: str, width: int = 160) -> str:
    """One line saying why: for invalid events (``billing.events.describe_rejects``) how many and
    the first reason; for a failed batch the last line of its traceback (the exception)."""
    lines = [line.strip() for line in error.strip().splitlines() if line.strip()]
    if not lines:
        return ""
    if lines[0] == INVALID_EVENTS_HEADER and len(lines) > 1:
        count = len(lines) - 1
        line = f"{count} invalid event{'s' if count != 1 else ''}: {lines[1]}"
    else:
        line = lines[-1]
    return line if len(line) <= width else line[: width - 1] + "…"
