"""What one ingested batch changed: the hand-off between the ingest task (which writes events
and rollups in one transaction) and what runs after it commits (spend reconciliation, budget
alerts, live dashboards). Only *newly inserted* events count here; duplicates add nothing."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal


@dataclass(slots=True)
class Totals:
    """Sums over newly inserted events."""

    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cost: Decimal = field(default_factory=lambda: Decimal(0))


@dataclass(slots=True)
class IngestResult:
    """The outcome of ingesting one batch.

    ``by_org`` maps an organisation id (str) to the totals of its newly inserted events;
    ``keys`` holds the ``(org_id, key_id)`` pairs and ``months`` the ``YYYY-MM`` (UTC, by
    ``started_at``) months those events fall in, so reconciliation touches only what changed.
    ``ingested`` maps ``(scope, id, month)`` (scope ``"org"`` or ``"key"``) to ``[tokens,
    micros]`` newly inserted, counted as the gateway's limiter settled them (prompt + completion
    tokens; each event's cost in micro-units rounded up), for ``Limiter.set_month_used``.
    ``ingested_hours`` maps ``(org_id, hour)`` (the event's UTC hour, aware) to the micro-units
    newly inserted in that hour, counted the same way: the prepaid balances count only the hours
    from an organisation's ``prepaid_since`` (``billing.prepaid.ingested_since``).
    """

    received: int = 0
    inserted: int = 0
    by_org: dict[str, Totals] = field(default_factory=dict)
    keys: set[tuple[str, str]] = field(default_factory=set)
    months: set[str] = field(default_factory=set)
    ingested: dict[tuple[str, str, str], list[int]] = field(default_factory=dict)
    ingested_hours: dict[tuple[str, datetime], int] = field(default_factory=dict)

    @property
    def duplicates(self) -> int:
        return self.received - self.inserted
