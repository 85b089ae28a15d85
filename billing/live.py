"""Live usage for the console's dashboards: after each ingested batch, one compact update per
organisation to the Channels group ``usage.org.<org_id>`` and one summary to ``usage.staff``
(``docs/usage-api.md`` describes both messages; ``console.consumers`` forwards them).

Rates are the batch's totals divided by the time since the previous update of that organisation
(kept in Redis, so every ingest worker shares it), clamped to ``[MIN_WINDOW, MAX_WINDOW]``
seconds: with several workers, consecutive updates partition time, so the rates add up to the
true rate. After ``MAX_WINDOW`` idle seconds the first batch is averaged over ``MAX_WINDOW``.
Best effort: a dashboard that misses an update catches up with the next one.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from billing.ingest_result import IngestResult, Totals
from billing.spend import MonthUsed
from tenants.models import Organization
from vlinders.redis import get_redis, redis_key

STAFF_GROUP = "usage.staff"
MIN_WINDOW = 1.0
MAX_WINDOW = 60.0


def org_group(org_id: object) -> str:
    """The Channels group of one organisation's live usage."""
    return f"usage.org.{org_id}"


def _window(org_id: str, now: float) -> float:
    """Seconds since the previous update of this organisation (atomic swap in Redis)."""
    previous = get_redis().set(
        redis_key("usage-live", "v1", "org", org_id, "last"),
        repr(now),
        ex=int(MAX_WINDOW),
        get=True,
    )
    if previous is None:
        return MAX_WINDOW
    elapsed = now - float(previous)
    return min(MAX_WINDOW, max(MIN_WINDOW, elapsed))


def _rate(amount: int, window: float) -> float:
    return round(amount / window, 3)


def org_update(
    org_id: str, totals: Totals, window: float, at: str, month: str, month_used: MonthUsed | None
) -> dict[str, Any]:
    """The message one organisation's dashboards receive (JSON-ready: money as strings)."""
    tokens = totals.prompt_tokens + totals.completion_tokens
    return {
        "type": "usage.update",
        "org_id": org_id,
        "at": at,
        "window_seconds": round(window, 3),
        "requests": totals.requests,
        "errors": totals.errors,
        "prompt_tokens": totals.prompt_tokens,
        "completion_tokens": totals.completion_tokens,
        "tokens": tokens,
        "spend": str(totals.cost),
        "requests_per_second": _rate(totals.requests, window),
        "tokens_per_second": _rate(tokens, window),
        "month": month,
        "month_tokens": month_used.tokens if month_used else None,
        "month_spend": str(month_used.spend) if month_used else None,
    }


def build_messages(
    result: IngestResult,
    *,
    month: str,
    month_used: Mapping[str, MonthUsed],
    now: float | None = None,
) -> list[tuple[str, dict[str, Any]]]:
    """``(group, payload)`` for every organisation in ``result`` and one staff summary."""
    now = time.time() if now is None else now
    at = datetime.fromtimestamp(now, tz=UTC).isoformat().replace("+00:00", "Z")
    slugs = {
        str(pk): slug
        for pk, slug in Organization.objects.filter(pk__in=list(result.by_org)).values_list(
            "pk", "slug"
        )
    }
    out: list[tuple[str, dict[str, Any]]] = []
    rows: list[dict[str, Any]] = []
    for org_id, totals in sorted(result.by_org.items()):
        update = org_update(org_id, totals, _window(org_id, now), at, month, month_used.get(org_id))
        out.append((org_group(org_id), update))
        row = {k: v for k, v in update.items() if k != "type"}
        rows.append(row | {"slug": slugs.get(org_id)})
    summary = {
        "type": "usage.summary",
        "at": at,
        "requests": sum(t.requests for t in result.by_org.values()),
        "errors": sum(t.errors for t in result.by_org.values()),
        "tokens": sum(t.prompt_tokens + t.completion_tokens for t in result.by_org.values()),
        "spend": str(sum((t.cost for t in result.by_org.values()), Totals().cost)),
        "organizations": rows,
    }
    out.append((STAFF_GROUP, summary))
    return out


async def _send(messages: list[tuple[str, dict[str, Any]]]) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    for group, payload in messages:
        # The consumer's handler is named after the type (usage.update → usage_update).
        await layer.group_send(group, {"type": payload["type"], "payload": payload})


def push(result: IngestResult, *, month: str, month_used: Mapping[str, MonthUsed]) -> int:
    """Send the live updates of one batch; returns how many messages were sent."""
    if not result.by_org:
        return 0
    messages = build_messages(result, month=month, month_used=month_used)
    async_to_sync(_send)(messages)
    return len(messages)
