"""Validation of the usage events the gateway sends (contract 4, ``docs/usage-events.md``).

:func:`parse_event` turns one raw event (a dict decoded from the Celery message) into a
:class:`UsageRecord` with Python types (``uuid.UUID``, ``Decimal``, aware UTC ``datetime``), or
raises :class:`InvalidEvent` saying why. Ingest parks invalid events in a dead letter instead of
failing the whole batch, so every check a database would make (types, lengths, ranges) is made
here first: one bad event must never make the database refuse the other events of its batch.

The parser is strict where money or identity is concerned (``cost`` must be a decimal *string*
that a ``numeric(24, 12)`` holds exactly, ids must be UUIDs, ``schema`` must be 1) and lenient
where the contract allows it: unknown extra keys are ignored (a producer may add fields within a
schema version), and the nullable fields may be missing as well as ``null``.

The prices an event was served at (``price_input_per_mtok``/``price_output_per_mtok``) were added
to schema 1 as nullable fields, by that rule: an event of an older gateway (or one replayed from
a spool written before) has neither and is stored with ``NULL`` prices; a newer event has both or
neither (no model ran). When it has them, its ``cost`` must be exactly what its token counts cost
at them: that identity is what lets an invoice show "quantity times unit price" lines whose sum is
the sum of the events' cost (``billing.selectors.invoice_draft``), so an event that breaks it is
refused (parked in a dead letter) rather than stored with prices that do not explain its cost.
"""

from __future__ import annotations

import datetime as dt
import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from django.db.models import CharField

from billing.models import UsageEvent
from inference.serving.pricing import cost as cost_at

SCHEMA_VERSION = 1
ENDPOINTS = frozenset({"chat.completions", "completions", "embeddings"})
# Column bounds: PositiveIntegerField is a 4-byte integer; status is an HTTP status.
MAX_TOKENS = 2**31 - 1
MIN_STATUS, MAX_STATUS = 100, 599
# cost is numeric(24, 12): at most 12 decimal places and 12 integer digits, stored exactly.
COST_PLACES = 12
COST_LIMIT = Decimal(10) ** (24 - COST_PLACES)
# Prices are numeric(12, 6): USD per million tokens, at most 6 decimal places and 6 integer digits.
PRICE_PLACES = 6
PRICE_LIMIT = Decimal(10) ** (12 - PRICE_PLACES)
PRICE_FIELDS = ("price_input_per_mtok", "price_output_per_mtok")


def _max_length(name: str) -> int:
    field = UsageEvent._meta.get_field(name)
    assert isinstance(field, CharField)
    assert field.max_length is not None
    return field.max_length


class InvalidEvent(ValueError):
    """The event does not follow schema 1; the message says which field and why."""


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """One valid event, normalised: ``null`` strings became ``""``, ids are UUIDs, ``cost`` a
    ``Decimal`` and ``started_at`` an aware datetime in UTC."""

    request_id: str
    org_id: uuid.UUID
    key_id: uuid.UUID
    model: str
    served_model: str
    endpoint: str
    stream: bool
    status: int
    error_type: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    cost: Decimal
    latency_ms: float
    ttft_ms: float | None
    started_at: dt.datetime
    http_request_id: str
    # USD per million tokens the cost was computed at; both None for an event without them.
    price_input_per_mtok: Decimal | None = None
    price_output_per_mtok: Decimal | None = None
    # Replayed from the response cache (the event's ``cache`` is "hit").
    cache_hit: bool = False

    @property
    def rollup_model(self) -> str:
        """The model the rollup row is kept under: the served (priced) one, else the asked one
        (an error before any model was resolved has no served model)."""
        return self.served_model or self.model

    @property
    def hour(self) -> dt.datetime:
        """Start of the UTC hour the request started in: requests are billed by when they
        started, never by when their event arrived."""
        return self.started_at.replace(minute=0, second=0, microsecond=0)

    @property
    def month(self) -> str:
        return f"{self.started_at.year:04d}-{self.started_at.month:02d}"

    @property
    def is_error(self) -> bool:
        return self.status >= 400


@dataclass(frozen=True, slots=True)
class Rejected:
    """An event that could not be parsed, kept as it arrived, with the reason."""

    index: int
    raw: object
    reason: str


def _text(
    event: Mapping[str, Any], name: str, *, nullable: bool = False, empty: bool = False
) -> str:
    if nullable and event.get(name) is None:
        return ""
    if name not in event:
        raise InvalidEvent(f"{name}: missing")
    value = event[name]
    if not isinstance(value, str):
        raise InvalidEvent(f"{name}: expected a string, got {type(value).__name__}")
    if not value and not (empty or nullable):
        raise InvalidEvent(f"{name}: empty")
    if len(value) > _max_length(name):
        raise InvalidEvent(f"{name}: longer than {_max_length(name)} characters")
    if "\x00" in value:  # Postgres text cannot hold NUL
        raise InvalidEvent(f"{name}: contains a NUL character")
    return value


def _int(event: Mapping[str, Any], name: str, low: int, high: int) -> int:
    value = event.get(name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidEvent(f"{name}: expected an integer, got {type(value).__name__}")
    if not low <= value <= high:
        raise InvalidEvent(f"{name}: {value} is outside {low}..{high}")
    return value


def _optional_number(event: Mapping[str, Any], name: str) -> float | None:
    return None if event.get(name) is None else _number(event, name)


def _number(event: Mapping[str, Any], name: str) -> float:
    value = event.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidEvent(f"{name}: expected a number, got {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise InvalidEvent(f"{name}: {value!r} is not a finite non-negative number")
    return number


def _uuid(event: Mapping[str, Any], name: str) -> uuid.UUID:
    value = event.get(name)
    if not isinstance(value, str):
        raise InvalidEvent(f"{name}: expected a UUID string, got {type(value).__name__}")
    try:
        return uuid.UUID(value)
    except ValueError:
        raise InvalidEvent(f"{name}: {value[:80]!r} is not a UUID") from None


def _decimal(event: Mapping[str, Any], name: str, places: int, limit: Decimal) -> Decimal:
    """A non-negative decimal *string* that a column of ``places`` decimal places below ``limit``
    holds exactly (a JSON float has already lost the exact amount)."""
    value = event.get(name)
    if not isinstance(value, str):
        raise InvalidEvent(f"{name}: expected a decimal string, got {type(value).__name__}")
    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise InvalidEvent(f"{name}: {value[:80]!r} is not a decimal") from None
    if not amount.is_finite() or amount < 0 or amount >= limit:
        raise InvalidEvent(f"{name}: {value[:80]!r} is not in 0..{limit}")
    exponent = amount.as_tuple().exponent
    assert isinstance(exponent, int)  # finite
    if exponent < -places and amount != amount.quantize(Decimal(1).scaleb(-places)):
        raise InvalidEvent(f"{name}: {value[:80]!r} has more than {places} decimal places")
    return amount


def _cost(event: Mapping[str, Any]) -> Decimal:
    return _decimal(event, "cost", COST_PLACES, COST_LIMIT)


def _prices(event: Mapping[str, Any]) -> tuple[Decimal | None, Decimal | None]:
    """The two prices, both or neither (missing and ``null`` alike: an older gateway's event)."""
    present = [event.get(name) is not None for name in PRICE_FIELDS]
    if not any(present):
        return None, None
    if not all(present):
        raise InvalidEvent("price_input_per_mtok, price_output_per_mtok: one without the other")
    return (
        _decimal(event, "price_input_per_mtok", PRICE_PLACES, PRICE_LIMIT),
        _decimal(event, "price_output_per_mtok", PRICE_PLACES, PRICE_LIMIT),
    )


# The response cache's outcome (docs/response-cache.md), added to schema 1: absent is None.
CACHE_RESULTS = (None, "hit", "miss")


def _cache_hit(event: Mapping[str, Any]) -> bool:
    value = event.get("cache")
    if value not in CACHE_RESULTS:
        raise InvalidEvent(f"cache: expected null, 'hit' or 'miss', got {str(value)[:80]!r}")
    return value == "hit"


def _started_at(event: Mapping[str, Any]) -> dt.datetime:
    value = event.get("started_at")
    if not isinstance(value, str):
        raise InvalidEvent(f"started_at: expected an ISO 8601 string, got {type(value).__name__}")
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        raise InvalidEvent(f"started_at: {value[:80]!r} is not ISO 8601") from None
    if moment.tzinfo is None:
        raise InvalidEvent(f"started_at: {value[:80]!r} has no time zone")
    return moment.astimezone(dt.UTC)


def parse_event(raw: object) -> UsageRecord:
    """Validate and normalise one schema-1 event; raise :class:`InvalidEvent` otherwise."""
    if not isinstance(raw, Mapping):
        raise InvalidEvent(f"event: expected an object, got {type(raw).__name__}")
    schema = raw.get("schema")
    if type(schema) is not int or schema != SCHEMA_VERSION:
        raise InvalidEvent(
            f"schema: unknown version {schema!r} (this consumer reads {SCHEMA_VERSION})"
        )
    endpoint = _text(raw, "endpoint")
    if endpoint not in ENDPOINTS:
        raise InvalidEvent(f"endpoint: unknown {endpoint!r}")
    stream = raw.get("stream")
    if not isinstance(stream, bool):
        raise InvalidEvent(f"stream: expected a boolean, got {type(stream).__name__}")
    prompt_tokens = _int(raw, "prompt_tokens", 0, MAX_TOKENS)
    completion_tokens = _int(raw, "completion_tokens", 0, MAX_TOKENS)
    cost = _cost(raw)
    price_in, price_out = _prices(raw)
    if price_in is not None and price_out is not None:
        expected = cost_at(
            prompt_tokens, completion_tokens, input_per_mtok=price_in, output_per_mtok=price_out
        )
        if cost != expected:
            raise InvalidEvent(
                f"cost: {cost} is not what the tokens cost at the event's prices ({expected})"
            )
    return UsageRecord(
        request_id=_text(raw, "request_id"),
        org_id=_uuid(raw, "org_id"),
        key_id=_uuid(raw, "key_id"),
        model=_text(raw, "model"),
        served_model=_text(raw, "served_model", empty=True),
        endpoint=endpoint,
        stream=stream,
        status=_int(raw, "status", MIN_STATUS, MAX_STATUS),
        error_type=_text(raw, "error_type", nullable=True),
        finish_reason=_text(raw, "finish_reason", nullable=True),
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        cached_tokens=_int(raw, "cached_tokens", 0, MAX_TOKENS),
        cost=cost,
        latency_ms=_number(raw, "latency_ms"),
        ttft_ms=_optional_number(raw, "ttft_ms"),
        started_at=_started_at(raw),
        http_request_id=_text(raw, "http_request_id", nullable=True),
        price_input_per_mtok=price_in,
        price_output_per_mtok=price_out,
        cache_hit=_cache_hit(raw),
    )


def parse_batch(events: Sequence[object]) -> tuple[list[UsageRecord], list[Rejected]]:
    """Split a batch into its valid records (in order, duplicates kept) and its rejects."""
    records: list[UsageRecord] = []
    rejected: list[Rejected] = []
    for index, raw in enumerate(events):
        try:
            records.append(parse_event(raw))
        except InvalidEvent as exc:
            rejected.append(Rejected(index=index, raw=raw, reason=str(exc)))
    return records, rejected


def describe_rejects(rejected: Sequence[Rejected]) -> str:
    """One line per rejected event, for a dead letter's ``error``."""
    lines = []
    for item in rejected:
        request_id = item.raw.get("request_id") if isinstance(item.raw, Mapping) else None
        label = f"event {item.index}" + (f" ({str(request_id)[:80]})" if request_id else "")
        lines.append(f"{label}: {item.reason}")
    return "invalid usage events:\n" + "\n".join(lines)
