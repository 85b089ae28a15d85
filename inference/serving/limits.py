"""Rate limits and monthly budgets in Redis (contract 3, ``docs/limits.md``).

The gateway calls :meth:`Limiter.reserve` before a request reaches an engine, with an upper
estimate of its cost (prompt tokens + ``max_tokens``, and the spend those would cost), and
:meth:`Limiter.settle` with the real usage afterwards. Every decision is ONE Lua script, so it is
atomic across the key's and the organisation's counters and costs one Redis round trip; no
gateway replica keeps limiter state of its own.

What is limited, per API key and per organisation (the tighter one wins because both must pass):
requests per minute, tokens per minute, concurrent requests, tokens per UTC calendar month and
spend per UTC calendar month.

Per-minute limits use a *sliding window counter*: two fixed one-minute buckets, the previous one
weighted by how much of it still overlaps the last 60 s (``prev * (1 - elapsed/60) + curr``).
It assumes the previous minute's traffic was spread evenly. Worst case: a full burst at the very
end of one minute, followed by traffic at the limit's own pace, lets up to ``2 * limit - 1`` pass
in some 60 s span (the same bound as a token bucket whose burst equals the limit); what it
prevents is a fixed window's second burst right after the boundary.

Concurrency is a sorted set of reservation ids scored by lease expiry (10 minutes by default):
settle removes the lease, and a lease whose gateway died is reclaimed by the next script that
touches the scope once it expires, so a crash cannot hold a slot forever. A live gateway renews
the leases of its requests in flight (:meth:`Limiter.renew`, driven by
:class:`inference.serving.leases.LeaseKeeper`), so a lease lives exactly as long as its request:
a generation longer than one lease keeps its slot and is settled with its real usage.

The budget guarantee. A reservation of ``r`` is admitted only if ``used + reserved + r <= budget``
for the month, checked and recorded in the same script for both scopes. Settle replaces ``r`` in
``reserved`` by the actual ``a`` in ``used``; an expired lease moves ``r`` from ``reserved`` to
``used`` (the crashed request may have run; the control plane's reconciliation corrects it). So
``used + reserved <= budget`` holds after every script, whatever the concurrency, and

    used <= budget  +  sum over settled requests of max(0, a - r).

When every request's actual usage stays within what it reserved, a budget is never overspent,
not even by one micro-unit; a request that used more than it reserved (a low prompt estimate)
overspends by exactly that excess, and no further request is admitted until the counters are back
under the budget. Lowering a budget below what is already used or reserved refuses new requests; it
takes nothing back. Redis restarted empty forgets ``used`` until reconciliation rewrites it.

A prepaid organisation's credit balance is one more budget in the same scripts
(``reserve(..., prepaid=True)``; docs/limits.md, "Prepaid balance"): a hash without months,
``<prefix>limits:v1:org:<id>:balance``, where ``used + reserved + r <= credited`` is checked and
recorded with every other limit, so the guarantee above holds for it too; settle and lease reclaim
move a prepaid reservation there as they do in the month, and a missing hash fails closed as
``balance_unavailable`` (not the tenant's fault). Reconciliation: :meth:`Limiter.set_balance`.

Money is never a float: spend is kept as integer micro-units (1e-6 of the platform currency),
exact in Lua's doubles up to 2**53 micro-units (~9e9 currency units). Amounts are rounded up
(:func:`inference.serving.money.to_micros`, the one conversion, shared with billing), budgets
down, so the limiter never under-counts.
"""

from __future__ import annotations

import asyncio
import functools
import math
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_FLOOR, Decimal, InvalidOperation
from typing import Any, Literal, NamedTuple

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError

from inference.serving import metrics
from inference.serving.money import from_micros, to_micros

Scope = Literal["key", "org"]

WINDOW_SECONDS = 60
DEFAULT_LEASE_SECONDS = 600.0
# Budget keys outlive their month by this much, so late settles and reconciliation still find them.
MONTH_KEY_GRACE_SECONDS = 40 * 86400
# Leases and pending reservations of a scope are dropped after this long without any write.
IDLE_TTL_SECONDS = 40 * 86400
# Reservations renewed per script call; more are renewed in several calls, one after another.
RENEW_CHUNK = 1000
# What a refusal for a transient reason (a concurrency slot, in-flight reservations) asks to wait.
TRANSIENT_RETRY_SECONDS = 1.0
# The reserve script's refusal codes for the prepaid balance (after the 10 per-scope limits).
BALANCE_EXHAUSTED = 11
BALANCE_UNAVAILABLE = 12

_LIMIT_FIELDS = (
    "requests_per_minute",
    "tokens_per_minute",
    "max_concurrent_requests",
    "monthly_token_budget",
    "monthly_spend_budget",
)
_SCOPES: tuple[Scope, Scope] = ("key", "org")
_MONTH = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")
_MONTH_FIELDS = ("used_tokens", "used_micros", "reserved_tokens", "reserved_micros")
_BALANCE_FIELDS = (
    "credited_micros",
    "used_micros",
    "reserved_micros",
    "settled_micros",
    "ingested_micros",
)


class LimiterUnavailable(Exception):
    """Redis could not be reached. The gateway answers 503: without the limiter it fails closed."""


class DuplicateReservation(ValueError):
    """The request id still holds a different reservation; request ids must be unique. (The
    same reservation again is a retry, answered with the reservation: see ``Limiter.reserve``.)"""


@dataclass(frozen=True)
class LimitSet:
    """The limits of one scope (a key or an organisation). ``None`` means unlimited."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    max_concurrent_requests: int | None = None
    monthly_token_budget: int | None = None
    monthly_spend_budget: Decimal | None = None  # platform currency

    @classmethod
    def from_record(cls, limits: Mapping[str, Any] | None) -> LimitSet:
        """Build from the ``limits`` object of an access-snapshot record (contract 2).

        Missing fields and ``null`` are unlimited; spend arrives as a decimal string. Anything
        else malformed raises ``ValueError`` so the gateway fails closed.
        """
        limits = limits or {}
        ints: dict[str, int | None] = {}
        for name in _LIMIT_FIELDS[:4]:
            value = limits.get(name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                raise ValueError(f"limit {name} must be an integer or null, not {value!r}")
            if value is not None and value < 0:
                raise ValueError(f"limit {name} must not be negative")
            ints[name] = value
        spend = limits.get("monthly_spend_budget")
        budget: Decimal | None = None
        if spend is not None:
            if isinstance(spend, float | bool):
                raise ValueError("monthly_spend_budget must be a decimal string, never a float")
            try:
                budget = Decimal(spend)
            except InvalidOperation as exc:
                raise ValueError(f"monthly_spend_budget is not a decimal: {spend!r}") from exc
            if not budget.is_finite() or budget < 0:
                raise ValueError(f"monthly_spend_budget is out of range: {spend!r}")
        return cls(
            requests_per_minute=ints["requests_per_minute"],
            tokens_per_minute=ints["tokens_per_minute"],
            max_concurrent_requests=ints["max_concurrent_requests"],
            monthly_token_budget=ints["monthly_token_budget"],
            monthly_spend_budget=budget,
        )

    def _script_args(self) -> list[int]:
        """The limits as the scripts take them: integers, spend in micro-units, -1 unlimited."""
        spend = self.monthly_spend_budget
        return [
            -1 if self.requests_per_minute is None else self.requests_per_minute,
            -1 if self.tokens_per_minute is None else self.tokens_per_minute,
            -1 if self.max_concurrent_requests is None else self.max_concurrent_requests,
            -1 if self.monthly_token_budget is None else self.monthly_token_budget,
            -1 if spend is None else to_micros(spend, rounding=ROUND_FLOOR),
        ]


@dataclass(frozen=True)
class RateLimitStatus:
    """What the OpenAI-style ``x-ratelimit-*`` headers say: for the tighter of key and org.

    ``None`` fields (neither scope has that limit) are left out of the headers.
    """

    limit_requests: int | None = None
    remaining_requests: int | None = None
    reset_requests: float | None = None  # seconds until the window is empty again
    limit_tokens: int | None = None
    remaining_tokens: int | None = None
    reset_tokens: float | None = None

    def headers(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for kind in ("requests", "tokens"):
            limit = getattr(self, f"limit_{kind}")
            if limit is None:
                continue
            out[f"x-ratelimit-limit-{kind}"] = str(limit)
            out[f"x-ratelimit-remaining-{kind}"] = str(getattr(self, f"remaining_{kind}"))
            out[f"x-ratelimit-reset-{kind}"] = _duration(getattr(self, f"reset_{kind}"))
        return out


@dataclass(frozen=True)
class Reservation:
    """An admitted request. Pass it to :meth:`Limiter.settle` (or ``release``) exactly once;
    more calls are harmless no-ops."""

    request_id: str
    key_id: str
    org_id: str
    month: str  # YYYY-MM (UTC) the budgets were charged in
    minute: int  # the per-minute bucket (unix time // 60) the tokens were counted in
    tokens: int
    spend_micros: int
    lease_expires_at: float
    rate: RateLimitStatus

    @property
    def spend(self) -> Decimal:
        return from_micros(self.spend_micros)

    def headers(self) -> dict[str, str]:
        return self.rate.headers()


@dataclass(frozen=True)
class Refusal:
    """A refused request: which limit (``"key.requests_per_minute"``), the scope, and how long
    to wait. ``retry_after`` is ``None`` when the request can never fit (its cost alone exceeds
    the limit); the gateway should then say so rather than ask the client to retry.

    When several limits refuse, the one with the longest wait is reported: retrying sooner would
    only be refused again.
    """

    limit: str
    scope: Scope
    retry_after: float | None
    rate: RateLimitStatus

    def headers(self) -> dict[str, str]:
        return self.rate.headers()


class BalanceState(NamedTuple):
    """A prepaid balance's counters in micro-units: what is available to new requests is
    ``credited - used - reserved``."""

    credited_micros: int
    used_micros: int
    reserved_micros: int
    settled_micros: int
    ingested_micros: int

    @property
    def available(self) -> Decimal:
        return from_micros(self.credited_micros - self.used_micros - self.reserved_micros)


class MonthUsage(NamedTuple):
    used_tokens: int
    used_spend: Decimal
    reserved_tokens: int
    reserved_spend: Decimal


# --- Lua ------------------------------------------------------------------------------------
# Shared helpers. ``int`` formats a Lua number (a double) as an integer string: redis.call would
# otherwise format large numbers in exponent notation, which INCRBY/HINCRBY reject.
_LUA_COMMON = """
local function int(x) return string.format('%d', x) end
local function num(x) return tonumber(x) or 0 end

-- Add delta to a hash field, never leaving it below zero.
local function add(key, field, delta)
  local v = redis.call('HINCRBY', key, field, int(delta))
  if v < 0 then redis.call('HSET', key, field, 0) end
end

-- A pending record: 'month|tokens|micros', plus '|b' when the reservation is also held against
-- the organisation's prepaid balance. Returns month, tokens, micros, charged-to-balance.
local function parse(rec)
  local m, t, u, b = string.match(rec, '^([^|]*)|(%d+)|(%d+)(|?b?)$')
  return m, tonumber(t), tonumber(u), b == '|b'
end

-- Move a reservation of u micro-units from reserved to used in the prepaid balance (reclaim).
local function balance_used(balance, u)
  add(balance, 'reserved_micros', -u)
  redis.call('HINCRBY', balance, 'used_micros', int(u))
end

-- Leases that expired: their gateway is gone. A reservation of this month is counted as used
-- (it may have run; reconciliation from Postgres corrects it); one of an earlier month is just
-- dropped (that month no longer limits anything); one of a later month (a gateway whose clock
-- is ahead) is left for a script that runs in that month. A reservation held against the prepaid
-- balance (``balance`` is the org scope's balance key, nil for the key scope) is counted as used
-- there whatever its month: the balance has no months.
-- Returns how many leases it reclaimed.
local function reclaim(leases, pending, month_key, month, now, balance)
  local expired = redis.call('ZRANGEBYSCORE', leases, '-inf', now, 'LIMIT', 0, 256)
  local count = 0
  for _, id in ipairs(expired) do
    local rec = redis.call('HGET', pending, id)
    local m, t, u, b = nil, 0, 0, false
    if rec then m, t, u, b = parse(rec) end
    if not rec or m <= month then
      if b and balance then balance_used(balance, u) end
      if m == month then
        add(month_key, 'reserved_tokens', -t)
        add(month_key, 'reserved_micros', -u)
        redis.call('HINCRBY', month_key, 'used_tokens', int(t))
        redis.call('HINCRBY', month_key, 'used_micros', int(u))
      end
      redis.call('HDEL', pending, id)
      redis.call('ZREM', leases, id)
      count = count + 1
    end
  end
  return count
end
"""

# KEYS, per scope (key, then org): rpm_prev rpm_curr tpm_prev tpm_curr leases pending month;
#       then 15: the organisation's prepaid balance (read and written only when ARGV[21] is 1).
# ARGV: 1 now, 2 elapsed fraction of the minute, 3 request id, 4 tokens, 5 micros, 6 month,
#       7 lease expiry, 8 minute-bucket ttl, 9 month ttl, 10 idle ttl,
#       11-15 key limits, 16-20 org limits (rpm tpm concurrent tokens micros; -1 unlimited),
#       21 prepaid: 1 if the organisation pays from a prepaid balance, else 0.
# Returns {1 | 0 | 2 | -1, reservations reclaimed, 9 counters per scope..., refused codes...};
# 1: admitted, 0: refused, 2: this very reservation was already admitted (a replay), -1: the
# request id holds a different reservation. Refused codes: scope * 5 + limit index (1-10, the
# limits in ARGV order), 11: the prepaid balance cannot hold the reservation
# (used + reserved + micros > credited), 12: the balance hash is missing (Redis lost it and
# reconciliation has not rewritten it yet: fail closed, but it is not the tenant's doing).
#
# A prepaid reservation is one more budget: admitted only if ``used + reserved + micros <=
# credited`` in the balance hash, checked and recorded in this same script, and its pending record
# carries '|b' so that settle and reclaim know to move it in the balance too.
#
# Idempotent, like settle: the Redis client retries a call whose reply it did not read in time
# (redis-py's ``Retry``, on a socket timeout), and Redis may have run the first call already: a
# gateway whose event loop is busy for longer than the socket timeout reads its reply too late.
# The retry sends the very same arguments, so a pending record equal to the one this call would
# write, in both scopes, is that first call's: it is answered as admitted again (2), counting
# nothing twice, instead of refusing the request its own reservation.
_RESERVE = (
    _LUA_COMMON
    + """
local now, frac, rid = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local tokens, micros, month = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
local prepaid = ARGV[21] == '1'
local balance = nil
if prepaid then balance = KEYS[15] end
local record = month .. '|' .. ARGV[4] .. '|' .. ARGV[5]
if prepaid then record = record .. '|b' end

local held = 0
for s = 0, 1 do
  local rec = redis.call('HGET', KEYS[s * 7 + 6], rid)
  if rec then
    if rec ~= record then return {-1} end
    held = held + 1
  end
end
if held == 1 then return {-1} end
local replay = held == 2

local state, refused, reclaimed = {}, {}, 0
for s = 0, 1 do
  local k, a = s * 7, 10 + s * 5
  -- Expired prepaid reservations leave the balance too (the org scope's, whatever this
  -- request's own mode: the organisation may have switched since).
  local bal = nil
  if s == 1 then bal = KEYS[15] end
  local n = reclaim(KEYS[k + 5], KEYS[k + 6], KEYS[k + 7], month, now, bal)
  -- Counted in the org scope only: every reservation has exactly one organisation lease, and
  -- every reserve that touches its key also touches its organisation, so this counts each
  -- reclaimed reservation exactly once.
  if s == 1 then reclaimed = n end
  local rp, rc = num(redis.call('GET', KEYS[k + 1])), num(redis.call('GET', KEYS[k + 2]))
  local tp, tc = num(redis.call('GET', KEYS[k + 3])), num(redis.call('GET', KEYS[k + 4]))
  local conc = redis.call('ZCOUNT', KEYS[k + 5], '(' .. now, '+inf')
  local m = redis.call('HMGET', KEYS[k + 7],
    'used_tokens', 'used_micros', 'reserved_tokens', 'reserved_micros')
  local ut, um, rt, rm = num(m[1]), num(m[2]), num(m[3]), num(m[4])
  local rpm, tpm = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  local cc, tb, sb = tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4]), tonumber(ARGV[a + 5])
  if rpm >= 0 and rp * (1 - frac) + rc + 1 > rpm then table.insert(refused, s * 5 + 1) end
  if tpm >= 0 and tp * (1 - frac) + tc + tokens > tpm then table.insert(refused, s * 5 + 2) end
  if cc >= 0 and conc + 1 > cc then table.insert(refused, s * 5 + 3) end
  if tb >= 0 and ut + rt + tokens > tb then table.insert(refused, s * 5 + 4) end
  if sb >= 0 and um + rm + micros > sb then table.insert(refused, s * 5 + 5) end
  state[s + 1] = {rp, rc, tp, tc, conc, ut, um, rt, rm}
end

-- The prepaid balance: one more budget, of the organisation, without months.
if prepaid then
  local b = redis.call('HMGET', balance, 'credited_micros', 'used_micros', 'reserved_micros')
  if not b[1] then
    table.insert(refused, 12)
  elseif num(b[2]) + num(b[3]) + micros > num(b[1]) then
    table.insert(refused, 11)
  end
end

if replay then
  -- Counted already, by the call this one retries: its counters include the reservation.
  refused = {}
elseif #refused == 0 then
  for s = 0, 1 do
    local k, st = s * 7, state[s + 1]
    redis.call('INCR', KEYS[k + 2])
    redis.call('EXPIRE', KEYS[k + 2], ARGV[8])
    redis.call('INCRBY', KEYS[k + 4], ARGV[4])
    redis.call('EXPIRE', KEYS[k + 4], ARGV[8])
    redis.call('ZADD', KEYS[k + 5], ARGV[7], rid)
    redis.call('EXPIRE', KEYS[k + 5], ARGV[10])
    redis.call('HSET', KEYS[k + 6], rid, record)
    redis.call('EXPIRE', KEYS[k + 6], ARGV[10])
    redis.call('HINCRBY', KEYS[k + 7], 'reserved_tokens', ARGV[4])
    redis.call('HINCRBY', KEYS[k + 7], 'reserved_micros', ARGV[5])
    redis.call('EXPIRE', KEYS[k + 7], ARGV[9])
    st[2], st[4], st[5] = st[2] + 1, st[4] + tokens, st[5] + 1
    st[8], st[9] = st[8] + tokens, st[9] + micros
  end
  if prepaid then redis.call('HINCRBY', balance, 'reserved_micros', ARGV[5]) end
end

local status = 0
if replay then status = 2 elseif #refused == 0 then status = 1 end
local out = {status, reclaimed}
for s = 1, 2 do for _, v in ipairs(state[s]) do table.insert(out, v) end end
for _, c in ipairs(refused) do table.insert(out, c) end
return out
"""
)

# KEYS, per scope (key, then org): leases pending month tpm_bucket (the reservation's);
#       then 9: the organisation's prepaid balance (written only for a reservation whose pending
#       record says it was held against the balance, '|b').
# ARGV: 1 request id, 2 actual tokens, 3 actual micros, 4 month ttl
# Settle reclaims nothing: its month may not be the current one (reserve does it).
# Returns {settled in key scope 0|1, settled in org scope 0|1}.
_SETTLE = (
    _LUA_COMMON
    + """
local rid, tokens = ARGV[1], tonumber(ARGV[2])
local out = {}
for s = 0, 1 do
  local k = s * 4
  local rec = redis.call('HGET', KEYS[k + 2], rid)
  out[s + 1] = 0
  if rec then
    local _, t, u, b = parse(rec)
    if b and s == 1 then
      -- The same move in the balance: reserved -> actual, and settled for reconciliation.
      add(KEYS[9], 'reserved_micros', -u)
      redis.call('HINCRBY', KEYS[9], 'used_micros', ARGV[3])
      redis.call('HINCRBY', KEYS[9], 'settled_micros', ARGV[3])
    end
    redis.call('HDEL', KEYS[k + 2], rid)
    redis.call('ZREM', KEYS[k + 1], rid)
    add(KEYS[k + 3], 'reserved_tokens', -t)
    add(KEYS[k + 3], 'reserved_micros', -u)
    redis.call('HINCRBY', KEYS[k + 3], 'used_tokens', ARGV[2])
    redis.call('HINCRBY', KEYS[k + 3], 'used_micros', ARGV[3])
    -- What was settled, for reconciliation: settled minus ingested is what Postgres lacks yet.
    redis.call('HINCRBY', KEYS[k + 3], 'settled_tokens', ARGV[2])
    redis.call('HINCRBY', KEYS[k + 3], 'settled_micros', ARGV[3])
    redis.call('EXPIRE', KEYS[k + 3], ARGV[4])
    local cur = redis.call('GET', KEYS[k + 4])
    if cur and tokens ~= t then
      local v = tonumber(cur) + tokens - t
      if v < 0 then v = 0 end
      redis.call('SET', KEYS[k + 4], int(v), 'KEEPTTL')
    end
    out[s + 1] = 1
  end
end
return out
"""
)

# KEYS: per scope touched: leases, pending (scope i at KEYS[2i - 1], KEYS[2i]).
# ARGV: 1 new lease expiry, 2 idle ttl, then per reservation: request id, key scope index,
#       org scope index.
# A lease is renewed only where its request id is still pending (not settled, not reclaimed), and
# only ever moved later (GT): a renewal never resurrects a settled lease nor shortens one.
# Returns one 0|1 per reservation: renewed in at least one scope.
_RENEW = """
local expiry, ttl = ARGV[1], ARGV[2]
local out, touched = {}, {}
for i = 3, #ARGV, 3 do
  local rid, ok = ARGV[i], 0
  for j = 1, 2 do
    local s = tonumber(ARGV[i + j])
    if redis.call('HEXISTS', KEYS[2 * s], rid) == 1 then
      redis.call('ZADD', KEYS[2 * s - 1], 'XX', 'GT', expiry, rid)
      touched[s] = true
      ok = 1
    end
  end
  table.insert(out, ok)
end
for s in pairs(touched) do
  redis.call('EXPIRE', KEYS[2 * s - 1], ttl)
  redis.call('EXPIRE', KEYS[2 * s], ttl)
end
return out
"""

# KEYS: month. ARGV: 1 authority tokens, 2 authority micros, 3 ttl, 4 newly ingested tokens,
# 5 newly ingested micros. used = authority + what was settled here but is not ingested yet.
# The reserved_* fields are never written.
_SET_USED = (
    _LUA_COMMON
    + """
redis.call('HINCRBY', KEYS[1], 'ingested_tokens', ARGV[4])
redis.call('HINCRBY', KEYS[1], 'ingested_micros', ARGV[5])
local m = redis.call('HMGET', KEYS[1],
  'settled_tokens', 'settled_micros', 'ingested_tokens', 'ingested_micros')
local pt, pm = math.max(0, num(m[1]) - num(m[3])), math.max(0, num(m[2]) - num(m[4]))
redis.call('HSET', KEYS[1],
  'used_tokens', int(tonumber(ARGV[1]) + pt), 'used_micros', int(tonumber(ARGV[2]) + pm))
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""
)


# KEYS: the organisation's prepaid balance. ARGV: 1 credited micros, 2 authority used micros (the
# usage Postgres has ingested from prepaid_since on), 3 newly ingested micros (of that usage).
# used = authority + what was settled here but is not ingested yet, as for a month; reserved_micros
# (requests in flight) is never written. Writing credited_micros is what makes the hash present:
# until then a prepaid reserve fails closed (code 12).
_SET_BALANCE = (
    _LUA_COMMON
    + """
redis.call('HINCRBY', KEYS[1], 'ingested_micros', ARGV[3])
local m = redis.call('HMGET', KEYS[1], 'settled_micros', 'ingested_micros')
local pm = math.max(0, num(m[1]) - num(m[2]))
redis.call('HSET', KEYS[1], 'credited_micros', ARGV[1], 'used_micros', int(tonumber(ARGV[2]) + pm))
return 1
"""
)


class Limiter:
    """Contract 3: the data plane's limiter. One instance per gateway replica is enough; it
    holds no state of its own beyond the registered scripts.

    ``prefix`` is ``VLINDERS_REDIS_PREFIX``; every key starts with ``prefix + "limits:v1:"``.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        prefix: str,
        *,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
    ) -> None:
        if lease_seconds <= 0:
            raise ValueError("lease_seconds must be positive")
        self.redis = redis
        self.base = f"{prefix}limits:v1:"
        self.lease_seconds = lease_seconds
        # Scripts called in the same turn of the event loop share one round trip.
        self._batch = ScriptBatcher(redis)
        self._reserve = redis.register_script(_RESERVE)
        self._settle = redis.register_script(_SETTLE)
        self._set_used = redis.register_script(_SET_USED)
        self._renew = redis.register_script(_RENEW)
        self._set_balance = redis.register_script(_SET_BALANCE)

    # -- key layout ----------------------------------------------------------------------------
    def _scope(self, scope: Scope, ident: str) -> str:
        if scope not in _SCOPES:
            raise ValueError(f"scope must be 'key' or 'org', not {scope!r}")
        return f"{self.base}{scope}:{ident}:"

    def _month_key(self, scope: Scope, ident: str, month: str) -> str:
        return f"{self._scope(scope, ident)}month:{month}"

    def _balance_key(self, org_id: str) -> str:
        return f"{self._scope('org', org_id)}balance"

    # -- the API -------------------------------------------------------------------------------
    async def reserve(
        self,
        *,
        key_id: str,
        org_id: str,
        key_limits: LimitSet,
        org_limits: LimitSet,
        tokens: int,
        spend: Decimal,
        request_id: str,
        prepaid: bool = False,
        now: float | None = None,
    ) -> Reservation | Refusal:
        """Check every limit of both scopes and, only if all pass, record the request: one
        request and ``tokens`` in this minute's buckets, a concurrency lease, and ``tokens`` and
        ``spend`` as reserved against this month's budgets. One atomic script.

        ``tokens`` and ``spend`` are the upper estimate (prompt + max_tokens). Raises
        :class:`LimiterUnavailable` when Redis cannot be reached and
        :class:`DuplicateReservation` when ``request_id`` still holds a different reservation.

        Idempotent: a call that repeats a pending reservation exactly (the Redis client's retry
        of a call whose reply came too late, after Redis had run it) returns that reservation
        again and counts nothing twice (``vlinders_gateway_reserve_replays_total``).

        ``prepaid``: the organisation pays from a prepaid balance (``set_balance``), one more
        budget checked and recorded in the same script: admitted only if ``used + reserved +
        spend <= credited``. A refusal by the balance is reported before any other (waiting
        does not help) as ``"org.prepaid_balance"`` with ``retry_after=None``; a balance Redis
        does not hold (lost, not reconciled yet) as ``"org.balance_unavailable"`` with a short
        ``retry_after``: the platform's fault, not the tenant's.
        """
        if tokens < 0:
            raise ValueError("tokens must not be negative")
        micros = to_micros(spend)
        now = time.time() if now is None else now
        minute = math.floor(now / WINDOW_SECONDS)
        frac = (now - minute * WINDOW_SECONDS) / WINDOW_SECONDS
        month, month_end = _month_of(now)
        keys: list[str] = []
        for scope, ident in zip(_SCOPES, (key_id, org_id), strict=True):
            base = self._scope(scope, ident)
            keys += [
                f"{base}rpm:{minute - 1}",
                f"{base}rpm:{minute}",
                f"{base}tpm:{minute - 1}",
                f"{base}tpm:{minute}",
                f"{base}leases",
                f"{base}pending",
                f"{base}month:{month}",
            ]
        keys.append(self._balance_key(org_id))
        lease_expires_at = now + self.lease_seconds
        args: list[str | int] = [
            repr(now),
            repr(frac),
            request_id,
            tokens,
            micros,
            month,
            repr(lease_expires_at),
            _ttl((minute + 2) * WINDOW_SECONDS - now + WINDOW_SECONDS),
            _ttl(month_end + MONTH_KEY_GRACE_SECONDS - now),
            _ttl(max(IDLE_TTL_SECONDS, 2 * self.lease_seconds)),
            *key_limits._script_args(),
            *org_limits._script_args(),
            1 if prepaid else 0,
        ]
        reply = await self._call("reserve", self._reserve, keys, args)
        status = int(reply[0])
        if status == -1:
            raise DuplicateReservation(
                f"request id {request_id!r} already holds a different reservation"
            )
        if reclaimed := int(reply[1]):
            metrics.LEASES_RECLAIMED.inc(reclaimed)
        counters = [_Counters(*(int(v) for v in reply[2 + 9 * s : 11 + 9 * s])) for s in (0, 1)]
        limits = (key_limits, org_limits)
        rate = _rate_status(counters, limits, frac)
        if status == 2:
            metrics.RESERVE_REPLAYS.inc()
        if status in (1, 2):
            return Reservation(
                request_id=request_id,
                key_id=key_id,
                org_id=org_id,
                month=month,
                minute=minute,
                tokens=tokens,
                spend_micros=micros,
                lease_expires_at=lease_expires_at,
                rate=rate,
            )
        codes = [int(code) for code in reply[20:]]
        if BALANCE_UNAVAILABLE in codes or BALANCE_EXHAUSTED in codes:
            unavailable = BALANCE_UNAVAILABLE in codes
            return Refusal(
                limit="org.balance_unavailable" if unavailable else "org.prepaid_balance",
                scope="org",
                retry_after=TRANSIENT_RETRY_SECONDS if unavailable else None,
                rate=rate,
            )
        waits: list[tuple[float, str, Scope]] = []
        for code in codes:
            s, index = divmod(int(code) - 1, 5)
            wait = _retry_after(
                index, counters[s], limits[s], frac, tokens, micros, month_end - now
            )
            waits.append((math.inf if wait is None else wait, _LIMIT_FIELDS[index], _SCOPES[s]))
        wait, field, scope = max(waits, key=lambda w: w[0])
        return Refusal(
            limit=f"{scope}.{field}",
            scope=scope,
            retry_after=None if wait == math.inf else wait,
            rate=rate,
        )

    async def settle(
        self,
        reservation: Reservation,
        *,
        prompt_tokens: int,
        completion_tokens: int,
        spend: Decimal,
        now: float | None = None,
    ) -> bool:
        """Replace the reservation by the actual usage, atomically for both scopes: release the
        lease, ``reserved -= reserved amount`` and ``used += actual`` in the reservation's month,
        and correct the reservation's tokens/min bucket by ``actual - reserved`` (never below 0).

        Idempotent: the script deletes the reservation's pending record, so a second call (a
        retry after a timeout) finds nothing and changes nothing. Returns whether this call
        settled anything. A reservation whose lease expired *and* was reclaimed by a later
        reserve was counted as fully used then; settling it does nothing (reconciliation
        corrects it). ``now`` only sets the month counters' expiry.
        """
        if prompt_tokens < 0 or completion_tokens < 0:
            raise ValueError("token counts must not be negative")
        micros = to_micros(spend)
        now = time.time() if now is None else now
        _, month_end = _month_bounds(reservation.month)
        keys: list[str] = []
        for scope, ident in zip(_SCOPES, (reservation.key_id, reservation.org_id), strict=True):
            base = self._scope(scope, ident)
            keys += [
                f"{base}leases",
                f"{base}pending",
                f"{base}month:{reservation.month}",
                f"{base}tpm:{reservation.minute}",
            ]
        keys.append(self._balance_key(reservation.org_id))
        args: list[str | int] = [
            reservation.request_id,
            prompt_tokens + completion_tokens,
            micros,
            _ttl(month_end + MONTH_KEY_GRACE_SECONDS - now),
        ]
        reply = await self._call("settle", self._settle, keys, args)
        return any(int(v) for v in reply)

    async def renew(self, reservations: Iterable[Reservation], *, now: float | None = None) -> int:
        """Extend the leases of requests still in flight to ``now + lease_seconds``; return how
        many were renewed. See :meth:`renew_each`."""
        return sum(await self.renew_each(list(reservations), now=now))

    async def renew_each(
        self, reservations: Sequence[Reservation], *, now: float | None = None
    ) -> list[bool]:
        """Extend the leases of many reservations at once, in both scopes; one flag per
        reservation, in order: whether its lease was renewed (in at least one scope).

        One script call per :data:`RENEW_CHUNK` reservations, whatever their keys and
        organisations, so a replica renews thousands of requests in flight with a handful of
        round trips. A lease is renewed only where its request id is still *pending*: a
        reservation already settled, or reclaimed after it expired, is not brought back (its
        flag is False, and the caller should stop renewing it). An expired lease that no reserve
        has reclaimed yet is still the request's and is renewed. A renewal only ever moves a
        lease later, so a replica whose clock lags cannot shorten one. The leases and pending
        records also get their idle expiry refreshed. Raises :class:`LimiterUnavailable`; a
        failed chunk leaves the earlier chunks renewed.
        """
        now = time.time() if now is None else now
        expiry = repr(now + self.lease_seconds)
        idle = _ttl(max(IDLE_TTL_SECONDS, 2 * self.lease_seconds))
        flags: list[bool] = []
        for start in range(0, len(reservations), RENEW_CHUNK):
            chunk = reservations[start : start + RENEW_CHUNK]
            scopes: dict[str, int] = {}
            keys: list[str] = []
            args: list[str | int] = [expiry, idle]
            for res in chunk:
                args.append(res.request_id)
                for scope, ident in zip(_SCOPES, (res.key_id, res.org_id), strict=True):
                    base = self._scope(scope, ident)
                    if base not in scopes:
                        scopes[base] = len(scopes) + 1
                        keys += [f"{base}leases", f"{base}pending"]
                    args.append(scopes[base])
            reply = await self._call("renew", self._renew, keys, args)
            flags += [bool(int(v)) for v in reply]
        return flags

    async def release(self, reservation: Reservation, *, now: float | None = None) -> bool:
        """Settle with zero usage: the request failed before the engine produced anything."""
        return await self.settle(
            reservation, prompt_tokens=0, completion_tokens=0, spend=Decimal(0), now=now
        )

    async def month_usage(
        self, scope: Scope, ident: str, *, month: str | None = None, now: float | None = None
    ) -> MonthUsage:
        """``(used_tokens, used_spend, reserved_tokens, reserved_spend)`` of one scope for a
        month (default: the current UTC month). Leases that expired but were not reclaimed yet
        still count as reserved."""
        if month is None:
            month, _ = _month_of(time.time() if now is None else now)
        _month_bounds(month)
        values = await self._call_plain(
            "month_usage",
            self.redis.hmget(self._month_key(scope, ident, month), list(_MONTH_FIELDS)),
        )
        ut, um, rt, rm = (int(v or 0) for v in values)
        return MonthUsage(ut, from_micros(um), rt, from_micros(rm))

    async def set_month_used(
        self,
        scope: Scope,
        ident: str,
        month: str,
        tokens: int,
        spend: Decimal,
        *,
        ingested_tokens: int = 0,
        ingested_micros: int = 0,
        now: float | None = None,
    ) -> None:
        """Reconcile a month's *used* counters with the authority (the control plane's
        Postgres): ``tokens`` and ``spend`` are what it has ingested for this scope and month.

        Requests settled here whose usage events are not ingested yet (the emitter's flush, the
        queue, the worker: about a second) are in Redis but not in Postgres; overwriting with
        Postgres's numbers would forget them and free their budget for a moment. So settles
        also count ``settled_*``, the ingest reports what it newly inserted (``ingested_tokens``,
        ``ingested_micros``: the sum of each event's micro-units, as settles rounded them), and
        *used* becomes the authority plus ``settled - ingested`` (never below the authority).
        With nothing in flight that is exactly the authority. The *reserved* counters belong to
        requests in flight and are never touched, so reconciling cannot free or double a
        reservation."""
        if tokens < 0 or ingested_tokens < 0 or ingested_micros < 0:
            raise ValueError("token and micro-unit counts must not be negative")
        _, month_end = _month_bounds(month)
        now = time.time() if now is None else now
        args = [
            tokens,
            to_micros(spend),
            _ttl(month_end + MONTH_KEY_GRACE_SECONDS - now),
            ingested_tokens,
            ingested_micros,
        ]
        await self._call(
            "set_month_used", self._set_used, [self._month_key(scope, ident, month)], args
        )

    async def balance(self, org_id: str) -> BalanceState | None:
        """The prepaid balance's counters of an organisation as the gateway enforces them, or
        ``None`` when Redis holds none (never published, or lost and not reconciled yet)."""
        values = await self._call_plain(
            "balance",
            self.redis.hmget(self._balance_key(org_id), list(_BALANCE_FIELDS)),
        )
        if values[0] is None:
            return None
        credited, used, reserved, settled, ingested = (int(v or 0) for v in values)
        return BalanceState(credited, used, reserved, settled, ingested)

    async def set_balance(
        self,
        org_id: str,
        *,
        credited: Decimal,
        used: Decimal,
        ingested_micros: int = 0,
    ) -> None:
        """Reconcile an organisation's prepaid balance with the authority (Postgres):
        ``credited`` is every credit entry's sum, ``used`` the cost of the usage ingested from
        ``prepaid_since`` on, ``ingested_micros`` what the batch being reconciled newly inserted
        of that usage (each event's micro-units, as settles rounded them).

        The same rule as :meth:`set_month_used`: ``used`` becomes the authority plus what was
        settled here but is not ingested yet, so the ingest lag never frees balance; reserved
        (requests in flight) is never touched. Credited is rounded down, used up, so the limiter
        never lets more through than Postgres would. Writing it is what makes the balance
        present: until then a prepaid reserve fails closed as ``balance_unavailable``. The hash
        has no expiry (a balance has no month)."""
        if ingested_micros < 0:
            raise ValueError("micro-unit counts must not be negative")
        if used < 0:
            raise ValueError("used must not be negative")
        args = [
            # A balance adjusted below zero admits nothing, as zero does.
            to_micros(max(credited, Decimal(0)), rounding=ROUND_FLOOR),
            to_micros(used),
            ingested_micros,
        ]
        await self._call("set_balance", self._set_balance, [self._balance_key(org_id)], args)

    # -- plumbing ------------------------------------------------------------------------------
    async def _call(self, operation: str, script: Any, keys: list[str], args: list[Any]) -> Any:
        return await self._call_plain(operation, self._batch.call(script, keys, args))

    @staticmethod
    async def _call_plain(operation: str, awaitable: Any) -> Any:
        try:
            return await awaitable
        except (RedisError, OSError) as exc:
            # Connection loss, timeouts, a full connection pool ("Too many connections"), and
            # server-side refusals (BUSY, OOM, READONLY after a failover) alike: no decision could
            # be made, so the gateway answers 503 (or journals a settle, settle_journal.py).
            metrics.LIMITER_ERRORS.labels(operation).inc()
            raise LimiterUnavailable(f"the limiter's Redis failed: {exc}") from exc


# The most script calls one pipeline carries.
MAX_PIPELINE = 256


class ScriptBatcher:
    """Sends the script calls made in one turn of the event loop as one pipeline.

    Under load many requests reserve and settle in the same turn; each call on its own costs a
    connection checkout, a write and a read wake-up in the gateway and a read and a write in
    Redis. Pipelined, they share those; each script still runs on its own and atomically, so no
    guarantee changes (docs/limits.md). A call waits at most until the loop's next turn, so a
    lone request pays nothing measurable. A pipeline that fails fails each of its calls with the
    same error, and the client's one retry repeats the whole pipeline: every script the gateway
    runs is idempotent, which makes that safe, as it makes the single call's retry safe.
    """

    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        self._queue: list[tuple[Any, list[str], list[Any], asyncio.Future[Any]]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    def call(self, script: Any, keys: list[str], args: list[Any]) -> asyncio.Future[Any]:
        """The script's reply, as a future; Redis errors are raised by the future as they are
        raised by a direct call."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not self._queue:
            loop.call_soon(self._flush)
        self._queue.append((script, keys, args, future))
        return future

    def _flush(self) -> None:
        queue, self._queue = self._queue, []
        loop = asyncio.get_running_loop()
        for start in range(0, len(queue), MAX_PIPELINE):
            task = loop.create_task(self._send(queue[start : start + MAX_PIPELINE]))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(
        self, batch: list[tuple[Any, list[str], list[Any], asyncio.Future[Any]]]
    ) -> None:
        # A caller cancelled before its call left (its client went away) sends nothing, as a
        # direct call cancelled before it was written.
        batch = [item for item in batch if not item[3].done()]
        if not batch:
            return
        if len(batch) == 1:
            script, keys, args, future = batch[0]
            await _settle_future(future, script(keys=keys, args=args))
            return
        pipe = self.redis.pipeline(transaction=False)
        for script, keys, args, _ in batch:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        try:
            replies = await pipe.execute(raise_on_error=False)
        except BaseException as error:
            for *_, future in batch:
                if not future.done():
                    future.set_exception(error)
            if not isinstance(error, Exception):
                raise
            return
        for (script, keys, args, future), reply in zip(batch, replies, strict=True):
            if isinstance(reply, NoScriptError):
                # Redis lost its scripts (a restart, SCRIPT FLUSH): this call loads it again.
                await _settle_future(future, script(keys=keys, args=args))
            elif future.done():
                continue  # its caller went away
            elif isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)


async def _settle_future(future: asyncio.Future[Any], awaitable: Any) -> None:
    try:
        reply = await awaitable
    except Exception as error:
        if not future.done():
            future.set_exception(error)
        return
    except BaseException:
        future.cancel()
        raise
    if not future.done():
        future.set_result(reply)


@dataclass(frozen=True)
class _Counters:
    """One scope's counters as a script saw them (after recording, when admitted)."""

    rpm_prev: int
    rpm_curr: int
    tpm_prev: int
    tpm_curr: int
    concurrent: int
    used_tokens: int
    used_micros: int
    reserved_tokens: int
    reserved_micros: int


def _estimate(prev: int, curr: int, frac: float) -> float:
    """The sliding-window count: the previous bucket weighted by its remaining overlap."""
    return prev * (1 - frac) + curr


def _window_reset(prev: int, curr: int, frac: float) -> float:
    """Seconds until the window is empty again, if nothing more arrives."""
    left = (1 - frac) * WINDOW_SECONDS
    if curr > 0:
        return left + WINDOW_SECONDS
    return left if prev > 0 else 0.0


def _window_wait(prev: int, curr: int, frac: float, limit: int, cost: int) -> float | None:
    """Seconds until ``cost`` fits under ``limit``, if nothing more arrives; None: never."""
    if cost > limit:
        return None
    left = (1 - frac) * WINDOW_SECONDS
    if curr + cost <= limit:  # fits later in this minute, as the previous bucket fades
        at = 1 - (limit - curr - cost) / prev if prev else frac
        return max(0.0, (at - frac) * WINDOW_SECONDS)
    # Only in the next minute, as this one fades (curr > 0 here).
    return left + (1 - (limit - cost) / curr) * WINDOW_SECONDS


def _retry_after(
    index: int,
    c: _Counters,
    limits: LimitSet,
    frac: float,
    tokens: int,
    micros: int,
    until_next_month: float,
) -> float | None:
    if index == 0:
        wait = _window_wait(c.rpm_prev, c.rpm_curr, frac, _req(limits.requests_per_minute), 1)
    elif index == 1:
        wait = _window_wait(c.tpm_prev, c.tpm_curr, frac, _req(limits.tokens_per_minute), tokens)
    elif index == 2:
        return None if _req(limits.max_concurrent_requests) < 1 else TRANSIENT_RETRY_SECONDS
    else:
        if index == 3:
            budget, cost, used = _req(limits.monthly_token_budget), tokens, c.used_tokens
        else:
            spend = _req(limits.monthly_spend_budget)
            budget, cost = to_micros(spend, rounding=ROUND_FLOOR), micros
            used = c.used_micros
        if cost > budget:
            return None
        # Only in-flight reservations stand in the way: they settle within seconds.
        return TRANSIENT_RETRY_SECONDS if used + cost <= budget else max(until_next_month, 0.001)
    # Up to the millisecond (ignoring float noise), and never zero: it was refused just now.
    return None if wait is None else max(math.ceil(wait * 1000 - 1e-6) / 1000, 0.001)


def _req(value: Any) -> Any:
    assert value is not None  # a refused limit is never unlimited
    return value


def _rate_status(
    counters: list[_Counters], limits: tuple[LimitSet, LimitSet], frac: float
) -> RateLimitStatus:
    """The headers' numbers: for each of requests and tokens, the scope with less remaining."""
    found: dict[str, tuple[int, int, float]] = {}
    for c, lim in zip(counters, limits, strict=True):
        for kind, limit, prev, curr in (
            ("requests", lim.requests_per_minute, c.rpm_prev, c.rpm_curr),
            ("tokens", lim.tokens_per_minute, c.tpm_prev, c.tpm_curr),
        ):
            if limit is None:
                continue
            remaining = max(0, math.floor(limit - _estimate(prev, curr, frac)))
            entry = (remaining, limit, _window_reset(prev, curr, frac))
            if kind not in found or entry[:2] < found[kind][:2]:
                found[kind] = entry
    req, tok = found.get("requests"), found.get("tokens")
    return RateLimitStatus(
        limit_requests=req[1] if req else None,
        remaining_requests=req[0] if req else None,
        reset_requests=req[2] if req else None,
        limit_tokens=tok[1] if tok else None,
        remaining_tokens=tok[0] if tok else None,
        reset_tokens=tok[2] if tok else None,
    )


def _duration(seconds: float | None) -> str:
    """OpenAI's reset format: ``"20ms"``, ``"1s"``, ``"6m0s"``."""
    if not seconds or seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    minutes, secs = divmod(math.ceil(seconds), 60)
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def _month_of(now: float) -> tuple[str, float]:
    """The UTC calendar month of a unix time, and when the next one starts. Every request asks
    this: the month last answered is kept and reused while ``now`` falls inside it."""
    month, start, end = _last_month
    if start <= now < end:
        return month, end
    moment = datetime.fromtimestamp(now, tz=UTC)
    month = f"{moment.year:04d}-{moment.month:02d}"
    start, end = _month_bounds(month)
    _last_month[:] = [month, start, end]
    return month, end


_last_month: list[Any] = ["", 0.0, 0.0]  # the month _month_of answered last, its start and end


@functools.lru_cache(maxsize=64)
def _month_bounds(month: str) -> tuple[float, float]:
    """Start and end (the next month's start) of a ``YYYY-MM`` month, as unix times."""
    if not _MONTH.match(month):
        raise ValueError(f"month must be YYYY-MM, not {month!r}")
    year, mon = int(month[:4]), int(month[5:])
    start = datetime(year, mon, 1, tzinfo=UTC)
    end = datetime(year + mon // 12, mon % 12 + 1, 1, tzinfo=UTC)
    return start.timestamp(), end.timestamp()


def _ttl(seconds: float) -> int:
    """A relative time-to-live in whole seconds, at least one (EXPIRE with 0 would delete)."""
    return max(1, math.ceil(seconds))
