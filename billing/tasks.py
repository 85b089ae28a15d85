"""Celery tasks of billing: the consumer of the gateway's usage batches (contract 4).

``billing.ingest_usage`` is sent by the gateway by name, on the ``usage`` queue
(``CELERY_TASK_ROUTES``; workers consume it with ``-Q celery,usage``), as
``args=[[event, …]]`` in JSON. It acknowledges the message only when the task has returned
(``acks_late``) and gives the message back when the worker process died under it
(``reject_on_worker_lost``); a worker killed outright leaves the message unacknowledged in Redis,
which redelivers it after ``visibility_timeout``. Every redelivery is harmless because ingest is
idempotent on ``request_id`` (``billing.ingest``).

Failures:

* a database that is unreachable or dropped the connection (``OperationalError``,
  ``InterfaceError``: outage, failover, restart, deadlock, serialisation failure) → retried with
  exponential backoff and full jitter, up to ``VLINDERS_USAGE_INGEST_MAX_RETRIES`` times;
* retries exhausted, or any other error (one no retry can fix) → the whole batch is written to a
  dead letter with the task id, the error and the number of attempts, and the message is then
  acknowledged. If even the dead letter cannot be written (the database is still down), the task
  keeps retrying at the longest backoff instead: a batch is never dropped silently.

The retry loop is written out rather than left to ``autoretry_for``: Celery acknowledges a task
whose retries are exhausted, and the batch must be in a dead letter before that happens.
"""

from __future__ import annotations

import json
import logging
import traceback
from typing import Any

from celery import Task, shared_task
from celery.utils.time import get_exponential_backoff_interval
from django.conf import settings
from django.db import InterfaceError, OperationalError, connection, transaction

from billing import fault_points
from billing.dead_letters import dead_letter_park
from billing.ingest import ingest_events, notify_after_batch

logger = logging.getLogger(__name__)

INGEST_TASK_NAME = "billing.ingest_usage"
RETRYABLE = (OperationalError, InterfaceError)
BACKOFF_FACTOR_S = 2


def _error_text(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc)).strip()


def _give_up(task: Task[Any, Any], events: Any, exc: BaseException) -> dict[str, Any]:
    """Park the whole batch; if that fails on the database too, retry at the longest backoff."""
    request = task.request
    attempts = request.retries + 1
    if connection.errors_occurred and not connection.is_usable():
        connection.close()  # broken by ``exc``: the dead letter gets a fresh connection
    try:
        with transaction.atomic():
            dead_letter = dead_letter_park(
                events=events, task_id=request.id or "", error=_error_text(exc), attempts=attempts
            )
    except RETRYABLE as park_exc:
        logger.warning("usage batch %s: database still failing, retrying later", request.id)
        raise task.retry(
            exc=park_exc,
            countdown=settings.VLINDERS_USAGE_INGEST_RETRY_BACKOFF_MAX_S,
            max_retries=request.retries + 1,  # past max_retries on purpose: never drop
        ) from exc
    except Exception:
        # Not even a dead letter: keep the batch in the log, the last place left.
        logger.critical(
            "usage batch %s could not be dead-lettered; events: %s",
            request.id,
            json.dumps(events, default=str),
        )
        raise
    return {"dead_letter": str(dead_letter.pk), "attempts": attempts}


@shared_task(
    bind=True,
    name=INGEST_TASK_NAME,
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
    max_retries=settings.VLINDERS_USAGE_INGEST_MAX_RETRIES,
)
def ingest_usage(self: Task[Any, Any], events: Any) -> dict[str, Any]:
    """Ingest one batch of usage events from the gateway (see the module doc)."""
    if not isinstance(events, list):
        return _give_up(
            self, events, TypeError(f"expected a list of events, got {type(events).__name__}")
        )
    try:
        result = ingest_events(events, task_id=self.request.id or "")
    except RETRYABLE as exc:
        if self.request.retries >= (self.max_retries or 0):
            return _give_up(self, events, exc)
        countdown = get_exponential_backoff_interval(
            BACKOFF_FACTOR_S,
            self.request.retries,
            settings.VLINDERS_USAGE_INGEST_RETRY_BACKOFF_MAX_S,
            full_jitter=True,
        )
        logger.warning(
            "usage batch %s: database error (%s), retry %d in %ds",
            self.request.id,
            exc,
            self.request.retries + 1,
            countdown,
        )
        raise self.retry(exc=exc, countdown=countdown) from exc
    except Exception as exc:
        logger.exception("usage batch %s failed; dead-lettering it", self.request.id)
        return _give_up(self, events, exc)
    fault_points.pause("after_commit")
    notify_after_batch(result)
    return {"received": result.received, "inserted": result.inserted}
