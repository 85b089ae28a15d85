"""The access snapshot (contract 2): what the gateway needs to authorise a request, in Redis.

The control plane is the only writer. It publishes after the database transaction commits, so the
gateway never sees state that was rolled back, and announces every change on a pub/sub channel so
each gateway replica drops its cached copy at once. The layout is documented, as a contract, in
``docs/access-snapshot.md``; change both together and bump ``SCHEMA_VERSION`` on breaking change.

Every publish takes a version from Redis before it reads a row, and every write is set-if-newer
by that version (``publish_keys`` argues why), so a publish that lands late never brings back a
revoked key or a suspended organisation.

A failed publish (Redis down) is logged and repaired by the periodic full republish
(``tenants.republish_access_snapshot``); the database stays the authority.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC
from decimal import Decimal
from typing import Any
from uuid import UUID

import redis
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from tenants.catalog import model_names_for_organization
from tenants.models import ApiKey, Limits, Organization
from tenants.plans import scheduling_priority
from vlinders.redis import get_redis, redis_key

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
_NAMESPACE = ("access", f"v{SCHEMA_VERSION}")


def key_record_name(secret_hash: str) -> str:
    return redis_key(*_NAMESPACE, "key", secret_hash)


def org_record_name(org_id: UUID | str) -> str:
    return redis_key(*_NAMESPACE, "org", str(org_id))


def channel_name() -> str:
    return redis_key(*_NAMESPACE, "invalidate")


def meta_name() -> str:
    return redis_key(*_NAMESPACE, "meta")


def _limits(row: Limits) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for field in Limits.LIMIT_FIELDS:
        value = getattr(row, field)
        # Money travels as a decimal string so no float ever touches a budget.
        out[field] = str(value) if isinstance(value, Decimal) else value
    return out


def _iso(moment: Any) -> str | None:
    return moment.isoformat() if moment is not None else None


def _now_iso() -> str:
    """Now, as ``published_at`` is written: UTC, always with microseconds, so two of these
    strings compare as the moments do. Informational only: which of two writes wins is decided
    by ``version``, never by a clock."""
    return timezone.now().astimezone(UTC).isoformat(timespec="microseconds")


def version_name() -> str:
    return redis_key(*_NAMESPACE, "version")


# Take the next publish version. A missing counter (Redis restarted empty, or the key was
# evicted) starts again from the clock in microseconds, not from 1: a publish that took its
# version before the restart and writes after it must not outrank every publish after it.
_NEXT_VERSION = """
if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('SET', KEYS[1], ARGV[1]) end
return redis.call('INCR', KEYS[1])
"""


def _take_version(client: redis.Redis) -> int:
    """The version of one publish (targeted or full): strictly greater than every version
    taken before it. Must be called before the publish reads any row (see ``publish_keys``)."""
    seed = time.time_ns() // 1000
    return int(client.eval(_NEXT_VERSION, 1, version_name(), seed))


def key_record(key: ApiKey, version: int) -> dict[str, Any]:
    """The gateway's view of one API key (looked up by the HMAC of the presented key)."""
    return {
        "schema": SCHEMA_VERSION,
        "version": version,
        "key_id": str(key.id),
        "org_id": str(key.organization_id),
        "name": key.name,
        "status": "revoked" if key.revoked_at is not None else "active",
        "expires_at": _iso(key.expires_at),
        "scopes": list(key.scopes),
        "allowed_models": list(key.allowed_models),
        "limits": _limits(key),
        "published_at": _now_iso(),
    }


def _suspended_reason(org: Organization) -> str | None:
    if org.status != Organization.Status.ACTIVE:
        return "staff"
    if org.payment_suspended_at is not None:
        return "payment"
    return None


def org_record(org: Organization, model_names: list[str], version: int) -> dict[str, Any]:
    """The gateway's view of one organisation: status, limits and the names it may use."""
    return {
        "schema": SCHEMA_VERSION,
        "version": version,
        "org_id": str(org.id),
        "slug": org.slug,
        # A staff suspension and a payment suspension (dunning) both refuse every key; the
        # reason only changes the gateway's message.
        "status": "suspended" if org.payment_suspended_at is not None else org.status,
        "suspended_reason": _suspended_reason(org),
        "billing_mode": org.billing_mode,
        "plan": org.plan,  # the gateway charges this plan's prices (docs/billing.md, Price book)
        "priority": scheduling_priority(org.plan),
        # Opted in to the response cache (docs/response-cache.md).
        "response_cache": org.response_cache_enabled,
        "limits": _limits(org),
        "models": model_names,
        "published_at": _now_iso(),
    }


def _dump(record: dict[str, Any]) -> str:
    return json.dumps(record, separators=(",", ":"), sort_keys=True)


def _message(kind: str, ident: str | None = None) -> str:
    body = {"schema": SCHEMA_VERSION, "kind": kind}
    if ident is not None:
        body["id"] = ident
    return _dump(body)


# One rule for every write, targeted or full: a record is written only if the stored record's
# version is older than ours (ARGV[1]), and a record with no row behind it is deleted only if it
# is older than the full pass. A record that is missing a version or cannot be read (no JSON, a
# record of an older format) counts as older than any publish.
_STORED_VERSION = """
local function stored_version(name)
  local current = redis.call('GET', name)
  if not current then return -1 end
  local ok, record = pcall(cjson.decode, current)
  if not ok or type(record) ~= 'table' or type(record['version']) ~= 'number' then
    return -1
  end
  return record['version']
end
"""
_SET_IF_NEWER = (
    _STORED_VERSION
    + """
if stored_version(KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
return 1
"""
)
_DELETE_IF_OLDER = (
    _STORED_VERSION
    + """
if stored_version(KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
return redis.call('DEL', KEYS[1])
"""
)


def _write(client: redis.Redis, version: int, records: list[tuple[str, str, str]]) -> int:
    """Write ``(name, record JSON, message)`` triples, each only if newer than what is stored,
    and announce each, in one Redis transaction; returns how many records were written."""
    if not records:
        return 0
    set_if_newer = client.register_script(_SET_IF_NEWER)
    pipe = client.pipeline(transaction=True)
    for name, record, message in records:
        set_if_newer(keys=[name], args=[version, record], client=pipe)
        pipe.publish(channel_name(), message)
    results = pipe.execute()
    return sum(int(done) for done in results[0::2])


def publish_keys(keys: QuerySet[ApiKey]) -> int:
    """Write the records of ``keys`` and announce each; returns how many were written (a key
    whose stored record is newer than this publish is left as it is).

    Ordering: this publish takes its version (``INCR``) *before* it reads a row, and every write
    is set-if-newer. That is what makes a late write harmless. Every change is published after
    its transaction commits, so the change's own publish takes its version after the commit. A
    publish that read the row *before* that commit (it saw the key still active) had taken its
    version before reading, so before the commit, so before the change's publish took its own:
    its version is smaller and its write, however late it lands, cannot replace the
    revocation. Conversely a publish with a larger version began reading after the change's
    publish took its version, so after the commit: it read the change (or a later one), and
    replacing the record with it loses nothing. Taking the version after reading would break
    this: a publish could read before the commit and still draw the larger number.

    ``keys`` is evaluated here, after the version is taken (a fresh ``.all()``, so rows that a
    caller already loaded are read again); pass a queryset, never a list of loaded rows.
    """
    client = get_redis()
    version = _take_version(client)
    records = [
        (
            key_record_name(key.secret_hash),
            _dump(key_record(key, version)),
            _message("key", key.secret_hash),
        )
        for key in keys.all().iterator(chunk_size=500)
    ]
    return _write(client, version, records)


def publish_organizations(orgs: QuerySet[Organization]) -> int:
    """Write the records of ``orgs`` (with the model names each may use) and announce each;
    returns how many were written. Versioned and evaluated as ``publish_keys`` is (the model
    names are read after the version is taken too)."""
    client = get_redis()
    version = _take_version(client)
    records = [
        (
            org_record_name(org.id),
            _dump(org_record(org, model_names_for_organization(org), version)),
            _message("org", str(org.id)),
        )
        for org in orgs.all().iterator(chunk_size=500)
    ]
    return _write(client, version, records)


@dataclass(frozen=True)
class FullPublishResult:
    organizations: int
    keys: int
    removed: int


def publish_full(batch_size: int = 500) -> FullPublishResult:
    """Rewrite the whole snapshot from the database and remove records with no row behind them.

    For a new or drifted Redis. Ends with one ``all`` message so every gateway drops its cache.

    The pass takes one version before reading anything and writes every record with it, under
    the same set-if-newer rule as the targeted publishes (see ``publish_keys`` for why that
    ordering is safe): a revocation or suspension published while the pass ran has a larger
    version and stays. A record with no row behind it is deleted only if its version is older
    than the pass: a key or organisation created while the pass ran (a larger version, a row
    the pass did not read) keeps its record. A smaller version means the record's publish
    began before the pass took its version, so its row was committed before the pass read;
    if the pass did not find the row, it was deleted since.
    """
    client = get_redis()
    version = _take_version(client)
    set_if_newer = client.register_script(_SET_IF_NEWER)
    delete_if_older = client.register_script(_DELETE_IF_OLDER)
    live: set[str] = set()
    org_count = key_count = 0
    pipe = client.pipeline(transaction=False)

    def write(name: str, record: dict[str, Any]) -> None:
        live.add(name)
        set_if_newer(keys=[name], args=[version, _dump(record)], client=pipe)

    for org in Organization.objects.order_by("pk").iterator(chunk_size=batch_size):
        write(org_record_name(org.id), org_record(org, model_names_for_organization(org), version))
        org_count += 1
        if org_count % batch_size == 0:
            pipe.execute()
    for key in ApiKey.objects.order_by("pk").iterator(chunk_size=batch_size):
        write(key_record_name(key.secret_hash), key_record(key, version))
        key_count += 1
        if key_count % batch_size == 0:
            pipe.execute()
    pipe.execute()

    removed = 0
    for pattern in (key_record_name("*"), org_record_name("*")):
        stale = [
            raw for raw in client.scan_iter(match=pattern, count=1000) if raw.decode() not in live
        ]
        for start in range(0, len(stale), batch_size):
            for name in stale[start : start + batch_size]:
                delete_if_older(keys=[name], args=[version], client=pipe)
            removed += sum(int(done) for done in pipe.execute())

    client.hset(
        meta_name(),
        mapping={"schema": SCHEMA_VERSION, "full_published_at": _now_iso(), "version": version},
    )
    client.publish(channel_name(), _message("all"))
    return FullPublishResult(organizations=org_count, keys=key_count, removed=removed)


def _guarded(what: str, publish: Any) -> None:
    try:
        publish()
    except redis.RedisError:
        logger.exception(
            "access snapshot: publishing %s failed; the periodic full republish will repair it",
            what,
        )


def publish_key_on_commit(key_id: UUID) -> None:
    """After the current transaction commits, publish the committed state of one key."""

    def publish() -> None:
        _guarded(f"key {key_id}", lambda: publish_keys(ApiKey.objects.filter(pk=key_id)))

    transaction.on_commit(publish)


def publish_organization_on_commit(org_id: UUID) -> None:
    """After the current transaction commits, publish the committed state of one organisation."""

    def publish() -> None:
        _guarded(
            f"organization {org_id}",
            lambda: publish_organizations(Organization.objects.filter(pk=org_id)),
        )

    transaction.on_commit(publish)


def publish_all_organizations_on_commit() -> None:
    """After commit, republish every organisation's record (the catalog or visibility changed)."""

    def publish() -> None:
        _guarded(
            "all organizations",
            lambda: publish_organizations(Organization.objects.all()),
        )

    transaction.on_commit(publish)


def publish_full_on_commit() -> None:
    """After commit, rewrite the whole snapshot (rows were deleted, so stale records must go)."""
    transaction.on_commit(lambda: _guarded("the full snapshot", publish_full))


def ensure_published() -> bool:
    """Republish in full if the snapshot is missing (Redis restarted empty); True if it did.

    Cheap enough to run every few seconds: one EXISTS on the meta hash, which only a full
    publish writes.
    """
    if get_redis().exists(meta_name()):
        return False
    publish_full()
    return True
