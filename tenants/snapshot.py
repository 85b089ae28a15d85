"""The access snapshot (contract 2): what the gateway needs to authorise a request, in Redis.

The control plane is the only writer. It publishes after the database transaction commits, so the
gateway never sees state that was rolled back, and announces every change on a pub/sub channel so
each gateway replica drops its cached copy at once. The layout is documented, as a contract, in
``docs/access-snapshot.md``; change both together and bump ``SCHEMA_VERSION`` on breaking change.

A failed publish (Redis down) is logged and repaired by the periodic full republish
(``tenants.republish_access_snapshot``); the database stays the authority.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC
from decimal import Decimal
from typing import Any
from uuid import UUID

import redis
from django.db import transaction
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
    strings compare (lexicographically, also inside Redis) as the moments do."""
    return timezone.now().astimezone(UTC).isoformat(timespec="microseconds")


def key_record(key: ApiKey) -> dict[str, Any]:
    """The gateway's view of one API key (looked up by the HMAC of the presented key)."""
    return {
        "schema": SCHEMA_VERSION,
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


def org_record(org: Organization, model_names: list[str]) -> dict[str, Any]:
    """The gateway's view of one organisation: status, limits and the names it may use."""
    return {
        "schema": SCHEMA_VERSION,
        "org_id": str(org.id),
        "slug": org.slug,
        "status": org.status,
        "priority": scheduling_priority(org.plan),
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


def publish_keys(keys: Iterable[ApiKey]) -> int:
    """Write the records of ``keys`` and announce each; returns how many were written."""
    client = get_redis()
    pipe = client.pipeline(transaction=True)
    count = 0
    for key in keys:
        pipe.set(key_record_name(key.secret_hash), _dump(key_record(key)))
        pipe.publish(channel_name(), _message("key", key.secret_hash))
        count += 1
    if count:
        pipe.execute()
    return count


def publish_organizations(orgs: Iterable[Organization]) -> int:
    """Write the records of ``orgs`` (with the model names each may use) and announce each."""
    client = get_redis()
    pipe = client.pipeline(transaction=True)
    count = 0
    for org in orgs:
        pipe.set(org_record_name(org.id), _dump(org_record(org, model_names_for_organization(org))))
        pipe.publish(channel_name(), _message("org", str(org.id)))
        count += 1
    if count:
        pipe.execute()
    return count


@dataclass(frozen=True)
class FullPublishResult:
    organizations: int
    keys: int
    removed: int


# Both scripts treat a record whose ``published_at`` is at or after the pass start (ARGV[1]) as
# newer than the pass: a targeted publish landed while the pass ran, and it wins. A record that
# cannot be read (no JSON, no ``published_at``) counts as older.
_NEWER_THAN_PASS = """
local function newer(name, since)
  local current = redis.call('GET', name)
  if not current then return false end
  local ok, record = pcall(cjson.decode, current)
  if not ok or type(record) ~= 'table' then return false end
  local at = record['published_at']
  return type(at) == 'string' and at >= since
end
"""
_SET_IF_NOT_NEWER = (
    _NEWER_THAN_PASS
    + """
if newer(KEYS[1], ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
return 1
"""
)
_DELETE_IF_OLDER = (
    _NEWER_THAN_PASS
    + """
if newer(KEYS[1], ARGV[1]) then return 0 end
return redis.call('DEL', KEYS[1])
"""
)


def publish_full(batch_size: int = 500) -> FullPublishResult:
    """Rewrite the whole snapshot from the database and remove records with no row behind them.

    For a new or drifted Redis. Ends with one ``all`` message so every gateway drops its cache.

    The pass reads rows and writes them later, so a targeted publish (a revocation, a suspension)
    may land in between. The pass therefore notes its start ``since`` before reading anything and
    never overwrites a record published at or after it, and it deletes only records published
    before it: a key or organisation created during the pass keeps its record.
    """
    client = get_redis()
    set_if_not_newer = client.register_script(_SET_IF_NOT_NEWER)
    delete_if_older = client.register_script(_DELETE_IF_OLDER)
    since = _now_iso()
    live: set[str] = set()
    org_count = key_count = 0
    pipe = client.pipeline(transaction=False)

    def write(name: str, record: dict[str, Any]) -> None:
        live.add(name)
        set_if_not_newer(keys=[name], args=[since, _dump(record)], client=pipe)

    for org in Organization.objects.order_by("pk").iterator(chunk_size=batch_size):
        write(org_record_name(org.id), org_record(org, model_names_for_organization(org)))
        org_count += 1
        if org_count % batch_size == 0:
            pipe.execute()
    for key in ApiKey.objects.order_by("pk").iterator(chunk_size=batch_size):
        write(key_record_name(key.secret_hash), key_record(key))
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
                delete_if_older(keys=[name], args=[since], client=pipe)
            removed += sum(int(done) for done in pipe.execute())

    client.hset(meta_name(), mapping={"schema": SCHEMA_VERSION, "full_published_at": _now_iso()})
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
            lambda: publish_organizations(Organization.objects.iterator(chunk_size=500)),
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
