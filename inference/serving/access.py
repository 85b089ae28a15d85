"""Authorisation from the access snapshot (contract 2, ``docs/access-snapshot.md``).

The gateway never reads Postgres. It reads the key and organisation records from Redis and keeps
them in an in-process cache that is dropped, entry by entry, by the control plane's pub/sub
invalidation messages. Why this is safe:

- A change reaches every replica as fast as Redis delivers the message (milliseconds).
- While the subscription is down (Redis restarting, a network cut), the cache is not used at all:
  every request reads Redis, and fails closed with a 503 if Redis is unreachable. A (re)subscribe
  drops the whole cache, since messages sent meanwhile were lost.
- Entries also expire after ``ttl`` seconds, a backstop against a subscription that died
  silently.
- Unknown keys are cached too (so guessing costs no Redis round trip); the message that announces
  a new key drops that entry.
- Concurrent misses for the same record share one Redis read (``_inflight``): a burst of a
  thousand requests with a key used for the first time, or right after a full republish
  dropped every cache, costs one GET per key and organisation, not one per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from inference.serving import errors, metrics
from inference.serving.limits import LimitSet

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
PING_INTERVAL = 5.0
KEY_SHAPE = re.compile(r"^vlk_[A-Za-z0-9]{52}$")
_MISSING: dict[str, Any] = {}


@dataclass(frozen=True)
class Principal:
    """Who is calling, and what they may do, for one request."""

    key_id: str
    org_id: str
    org_slug: str
    key_name: str
    key_limits: LimitSet
    org_limits: LimitSet
    org_models: frozenset[str]
    key_models: frozenset[str]  # empty: every name the organisation may use
    priority: int = 0  # the plan's engine scheduling priority (lower is served first)
    plan: str = ""  # the organisation's plan: the price book's prices it is charged (spec.py)
    # "prepaid": every request is also reserved against the organisation's credit balance
    # (limits.py); absent from the record, or anything else: postpaid.
    billing_mode: str = "postpaid"
    # The organisation opted in to the response cache (docs/response-cache.md); absent: off.
    response_cache: bool = False

    @property
    def prepaid(self) -> bool:
        return self.billing_mode == "prepaid"

    def may_use(self, name: str) -> bool:
        return name in self.org_models and (not self.key_models or name in self.key_models)

    def usable(self) -> list[str]:
        names = self.org_models if not self.key_models else self.org_models & self.key_models
        return sorted(names)


class _Lru:
    """A bounded mapping; the oldest entries go first."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.items: OrderedDict[str, tuple[float, dict[str, Any]]] = OrderedDict()

    def get(self, name: str, *, now: float, ttl: float) -> dict[str, Any] | None:
        entry = self.items.get(name)
        if entry is None or now - entry[0] > ttl:
            return None
        self.items.move_to_end(name)
        return entry[1]

    def put(self, name: str, value: dict[str, Any], *, now: float) -> None:
        self.items[name] = (now, value)
        self.items.move_to_end(name)
        while len(self.items) > self.capacity:
            self.items.popitem(last=False)

    def drop(self, name: str) -> None:
        self.items.pop(name, None)

    def clear(self) -> None:
        self.items.clear()


class AccessCache:
    """Reads and caches access-snapshot records; ``authorize`` is the gateway's only entry."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str,
        pepper: str,
        ttl: float = 30.0,
        capacity: int = 100_000,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.pepper = pepper.encode()
        self.ttl = ttl
        self.keys = _Lru(capacity)
        self.orgs = _Lru(capacity)
        self.subscribed = False
        self.invalidations = 0
        # Bumped by every invalidation: a read that raced one is not cached (see ``_record``).
        self.generation = 0
        self._listener: asyncio.Task[None] | None = None
        # Redis reads in flight, by record name: later misses for the same record await these.
        self._inflight: dict[tuple[str, int], asyncio.Task[dict[str, Any]]] = {}
        # Principals by key hash, with the records they were built from (``authorize``).
        self._principals: dict[str, _Built] = {}

    # --- Redis names (docs/access-snapshot.md) ---

    def _name(self, *parts: str) -> str:
        return self.prefix + ":".join(("access", f"v{SCHEMA_VERSION}", *parts))

    @property
    def channel(self) -> str:
        return self._name("invalidate")

    def key_hash(self, presented: str) -> str:
        # hmac.digest: the one-shot OpenSSL path, the same digest as hmac.new(...) at a fraction
        # of its cost (it runs on every request).
        return hmac.digest(self.pepper, presented.encode(), "sha256").hex()

    # --- invalidation ---

    def start(self) -> None:
        if self._listener is None:
            self._listener = asyncio.get_running_loop().create_task(self._listen())

    async def aclose(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None

    async def _listen(self) -> None:
        """Keep one subscription alive for the replica's life. A silent half-open connection is
        found by a ping every ``PING_INTERVAL`` seconds without traffic; any failure drops the
        cache's use (``subscribed`` false) until the next successful subscribe."""
        backoff = 0.1
        while True:
            pubsub = self.client.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                quiet_since = time.monotonic()
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is None:
                        if time.monotonic() - quiet_since > PING_INTERVAL:
                            await asyncio.wait_for(pubsub.ping(), timeout=PING_INTERVAL)
                            quiet_since = time.monotonic()
                        continue
                    quiet_since = time.monotonic()
                    if message["type"] == "subscribe":
                        # Anything sent while we were not listening is lost: start clean.
                        self._drop_all()
                        self.subscribed = True
                        backoff = 0.1
                    elif message["type"] == "message":
                        self._apply(message["data"])
            except asyncio.CancelledError:
                raise
            except Exception as error:
                logger.warning("access snapshot: subscription lost (%r); retrying", error)
            finally:
                self.subscribed = False
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)

    def _drop_all(self) -> None:
        self.generation += 1
        self.keys.clear()
        self.orgs.clear()
        self._principals.clear()

    def _apply(self, raw: bytes | str) -> None:
        self.invalidations += 1
        self.generation += 1
        try:
            message = json.loads(raw)
            kind, ident = message.get("kind"), message.get("id")
        except (ValueError, AttributeError):
            kind, ident = "all", None
        if kind == "key" and isinstance(ident, str):
            self.keys.drop(ident)
        elif kind == "org" and isinstance(ident, str):
            self.orgs.drop(ident)
        else:  # "all", or a message this version does not understand: drop everything
            self._drop_all()

    # --- reads ---

    async def _record(self, cache: _Lru, name: str, ident: str) -> dict[str, Any]:
        now = time.monotonic()
        if self.subscribed:
            cached = cache.get(ident, now=now, ttl=self.ttl)
            if cached is not None:
                return cached
        record_name = self._name(name, ident)
        # Only reads started since the last invalidation are shared: one started before it may
        # return what the invalidation replaced (a key that was just revoked).
        flight = (record_name, self.generation)
        read = self._inflight.get(flight)
        if read is None:
            # A task of its own, so a request that goes away does not cancel the read the
            # others wait for.
            read = asyncio.get_running_loop().create_task(
                self._read(cache, record_name, ident, now)
            )
            self._inflight[flight] = read
            read.add_done_callback(partial(self._read_done, flight))
        return await asyncio.shield(read)

    def _read_done(self, flight: tuple[str, int], read: asyncio.Task[dict[str, Any]]) -> None:
        self._inflight.pop(flight, None)
        if not read.cancelled():
            read.exception()  # retrieved here, whether or not anyone still waits for it

    async def _read(self, cache: _Lru, record_name: str, ident: str, now: float) -> dict[str, Any]:
        """One GET of a record, cached unless an invalidation raced it."""
        generation = self.generation
        try:
            raw = await self.client.get(record_name)
        except (RedisError, OSError) as error:
            raise _unreachable(error) from error
        record = _MISSING if raw is None else json.loads(raw)
        # An invalidation that arrived while the GET was in flight may be newer than what the
        # GET returned: then do not cache it (the next request reads Redis again).
        if self.subscribed and generation == self.generation:
            cache.put(ident, record, now=now)
        return record

    async def authorize(self, authorization: str | None) -> Principal:
        """Return the principal for an ``Authorization`` header, or raise the OpenAI-shaped
        error that refuses it (401 for any key problem, 403 without the inference scope).

        The principal built from a key record and its organisation's is kept while both are
        the cached records it was built from (a cached record is replaced on invalidation,
        never changed in place, so the same object means the same record): the checks they
        passed need not run again, only the expiry's, which depends on the time."""
        if not authorization:
            raise errors.unauthorized(
                "You didn't provide an API key. Send it as 'Authorization: Bearer vlk_...'.",
                code="missing_api_key",
            )
        scheme, _, presented = authorization.partition(" ")
        presented = presented.strip()
        if scheme.lower() != "bearer" or not KEY_SHAPE.match(presented):
            raise errors.unauthorized("Incorrect API key provided.")
        key_hash = self.key_hash(presented)
        key = await self._record(self.keys, "key", key_hash)
        built = self._principals.get(key_hash)
        if built is not None and built.key is key:
            org = await self._record(self.orgs, "org", built.org_ident)
            if built.org is org:
                if built.expires_at is not None and built.expires_at <= time.time():
                    raise errors.unauthorized("This API key has expired.", code="expired_api_key")
                return built.principal
        return await self._authorize_records(key_hash, key)

    async def _authorize_records(self, key_hash: str, key: dict[str, Any]) -> Principal:
        """Every check of a key record and of its organisation's record, and the principal."""
        if not key or key.get("schema") != SCHEMA_VERSION:
            raise errors.unauthorized("Incorrect API key provided.")
        if key.get("status") != "active":
            raise errors.unauthorized("This API key has been revoked.", code="revoked_api_key")
        expires_at = key.get("expires_at")
        if expires_at and datetime.fromisoformat(expires_at) <= datetime.now(UTC):
            raise errors.unauthorized("This API key has expired.", code="expired_api_key")
        org_ident = str(key.get("org_id"))
        org = await self._record(self.orgs, "org", org_ident)
        if not org or org.get("schema") != SCHEMA_VERSION:
            raise errors.unauthorized("Incorrect API key provided.")
        if org.get("status") != "active":
            if org.get("suspended_reason") == "payment":
                # Not the key's fault: 403 (the key is fine), with what to do about it.
                raise errors.forbidden(
                    "This organisation is suspended because an invoice is unpaid. Pay it on the "
                    "billing page of the console to reactivate the API keys.",
                    code="payment_suspended",
                )
            raise errors.unauthorized(
                "This API key's organisation is suspended.", code="organization_suspended"
            )
        if "inference" not in key.get("scopes", []):
            raise errors.forbidden(
                "This API key does not have the 'inference' scope.", code="missing_scope"
            )
        try:
            principal = Principal(
                key_id=key["key_id"],
                org_id=org["org_id"],
                org_slug=org.get("slug", ""),
                key_name=key.get("name", ""),
                key_limits=LimitSet.from_record(key.get("limits") or {}),
                org_limits=LimitSet.from_record(org.get("limits") or {}),
                org_models=frozenset(org.get("models", [])),
                key_models=frozenset(key.get("allowed_models", [])),
                priority=int(org.get("priority") or 0),
                plan=str(org.get("plan") or ""),
                billing_mode=str(org.get("billing_mode") or "postpaid"),
                response_cache=org.get("response_cache") is True,
            )
            expiry = datetime.fromisoformat(expires_at).timestamp() if expires_at else None
        except (KeyError, TypeError, ValueError):
            # A record the control plane should never have written: refuse (fail closed), as
            # a temporary condition of the platform, not the client's fault.
            logger.exception("malformed access-snapshot record for key %s", key.get("key_id"))
            metrics.AUTH_ERRORS.labels("malformed_record").inc()
            raise errors.unavailable(
                "Authorisation is temporarily unavailable; retry.", "access_unavailable"
            ) from None
        cached_key = self.keys.items.get(key_hash)
        cached_org = self.orgs.items.get(org_ident)
        if cached_key and cached_key[1] is key and cached_org and cached_org[1] is org:
            # Only for cached records: an uncached one is read again by the next request (a
            # new object), which would never match.
            if len(self._principals) >= self.keys.capacity:
                self._principals.clear()
            self._principals[key_hash] = _Built(key, org, org_ident, principal, expiry)
        return principal


@dataclass(frozen=True)
class _Built:
    """A principal and the two records it was built from."""

    key: dict[str, Any]
    org: dict[str, Any]
    org_ident: str
    principal: Principal
    expires_at: float | None  # the key's expiry (epoch seconds), None: never


def _unreachable(error: BaseException) -> errors.ApiError:
    """The 503 for a snapshot read that Redis failed (counted and logged once per read)."""
    logger.error("access snapshot: Redis unreachable: %s", error)
    metrics.AUTH_ERRORS.labels("redis_unreachable").inc()
    return errors.unavailable(
        "Authorisation is temporarily unavailable; retry shortly.", "auth_unavailable"
    )
