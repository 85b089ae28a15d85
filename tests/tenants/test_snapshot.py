"""The access snapshot (contract 2) against the real Redis: records, invalidation, full republish.

These tests read Redis the way the gateway will: by the HMAC of the presented key, then the
organisation record it points at, and they listen on the invalidation channel.
"""

import json
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from tenants import keys, services, snapshot
from tenants.models import Organization, Role
from tests.factories import CatalogModelFactory, ModelAliasFactory, OrganizationFactory

pytestmark = [pytest.mark.django_db, pytest.mark.redis]


def _read(redis_client, name):
    raw = redis_client.get(name)
    return None if raw is None else json.loads(raw)


def _key_record(redis_client, secret):
    return _read(redis_client, snapshot.key_record_name(keys.hash_key(secret)))


def _org_record(redis_client, org):
    return _read(redis_client, snapshot.org_record_name(org.id))


@pytest.fixture
def subscriber(redis_client):
    pubsub = redis_client.pubsub()
    pubsub.subscribe(snapshot.channel_name())
    assert pubsub.get_message(timeout=2)["type"] == "subscribe"
    yield pubsub
    pubsub.close()


def _messages(pubsub, wait=1.0):
    out, deadline = [], time.monotonic() + wait
    while time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.1)
        if message and message["type"] == "message":
            out.append(json.loads(message["data"]))
    return out


def _create_key(org, owner, **extra):
    return services.api_key_create(
        organization=org, name="k", created_by=owner, actor_role=Role.OWNER, **extra
    )


def test_key_creation_publishes_after_commit(
    org, owner, redis_client, subscriber, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        key, secret = _create_key(org, owner, requests_per_minute=30, monthly_spend_budget="12.5")
    # Nothing is visible before the transaction commits...
    assert _key_record(redis_client, secret) is None
    for callback in callbacks:
        callback()
    record = _key_record(redis_client, secret)
    # ...and then the gateway finds the key by the HMAC of what the client presents.
    assert record["schema"] == snapshot.SCHEMA_VERSION
    assert record["key_id"] == str(key.id)
    assert record["org_id"] == str(org.id)
    assert record["status"] == "active"
    assert record["scopes"] == ["inference"]
    assert record["limits"]["requests_per_minute"] == 30
    assert record["limits"]["monthly_spend_budget"] == "12.5000"
    assert record["limits"]["tokens_per_minute"] is None
    assert secret not in json.dumps(record)
    messages = _messages(subscriber)
    assert {"schema": 1, "kind": "key", "id": key.secret_hash} in messages


def test_rolled_back_change_is_never_published(
    org, owner, redis_client, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        _, secret = _create_key(org, owner)
    # The transaction is abandoned: its callbacks are dropped, not run.
    del callbacks
    assert _key_record(redis_client, secret) is None


def test_revocation_is_published_with_an_invalidation(
    org, owner, redis_client, subscriber, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        key, secret = _create_key(org, owner)
    _messages(subscriber, wait=0.3)
    with django_capture_on_commit_callbacks(execute=True):
        services.api_key_revoke(api_key=key, actor_role=Role.OWNER, actor=owner)
    assert _key_record(redis_client, secret)["status"] == "revoked"
    assert {"schema": 1, "kind": "key", "id": key.secret_hash} in _messages(subscriber)


def test_rotation_publishes_both_keys(org, owner, redis_client, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        old, old_secret = _create_key(org, owner)
    with django_capture_on_commit_callbacks(execute=True):
        _, new_secret = services.api_key_rotate(
            api_key=old, actor_role=Role.OWNER, actor=owner, grace=timedelta(minutes=5)
        )
    old_record = _key_record(redis_client, old_secret)
    assert old_record["status"] == "active"
    assert old_record["expires_at"] is not None
    assert timezone.datetime.fromisoformat(old_record["expires_at"]) <= timezone.now() + timedelta(
        minutes=5
    )
    assert _key_record(redis_client, new_secret)["status"] == "active"


def test_suspension_and_limits_update_the_organisation_record(
    org, redis_client, subscriber, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        services.organization_set_limits(organization=org, tokens_per_minute=5000)
    record = _org_record(redis_client, org)
    assert record["status"] == "active"
    assert record["limits"]["tokens_per_minute"] == 5000
    assert record["slug"] == "acme"
    assert record["priority"] == 0
    with django_capture_on_commit_callbacks(execute=True):
        services.organization_set_plan(organization=org, plan="premium")
    assert _org_record(redis_client, org)["priority"] == -10
    with django_capture_on_commit_callbacks(execute=True):
        services.organization_set_status(organization=org, status=Organization.Status.SUSPENDED)
    assert _org_record(redis_client, org)["status"] == "suspended"
    org_messages = [m for m in _messages(subscriber) if m["kind"] == "org"]
    assert org_messages == [{"schema": 1, "kind": "org", "id": str(org.id)}] * 3


def test_organisation_record_lists_usable_models_and_aliases(
    org, redis_client, django_capture_on_commit_callbacks
):
    public = CatalogModelFactory(name="public-m")
    CatalogModelFactory(name="restricted-m", visibility="restricted")
    ModelAliasFactory(name="gpt-4", target=public)
    with django_capture_on_commit_callbacks(execute=True):
        services.organization_update(organization=org, name="Acme")
    assert _org_record(redis_client, org)["models"] == ["gpt-4", "public-m"]


def test_full_republish_restores_a_wiped_redis_and_removes_stale_records(
    org, owner, redis_client, subscriber
):
    other = OrganizationFactory()
    key, secret = _create_key(org, owner)  # not published: no commit callbacks run here
    services.api_key_revoke(api_key=key, actor_role=Role.OWNER, actor=owner)
    stale = snapshot.key_record_name("0" * 64)
    redis_client.set(stale, "{}")
    redis_client.set(snapshot.org_record_name("00000000-0000-0000-0000-000000000000"), "{}")

    result = snapshot.publish_full()

    assert result.keys == 1
    assert result.organizations >= 2
    assert result.removed == 2
    assert redis_client.get(stale) is None
    assert _key_record(redis_client, secret)["status"] == "revoked"
    assert _org_record(redis_client, other)["slug"] == other.slug
    meta = redis_client.hgetall(snapshot.meta_name())
    assert meta[b"schema"] == b"1"
    assert {"schema": 1, "kind": "all"} in _messages(subscriber)


def test_publish_failure_is_logged_not_raised(
    org, owner, settings, caplog, django_capture_on_commit_callbacks
):
    from vlinders.redis import _client

    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    _client.cache_clear()
    try:
        with django_capture_on_commit_callbacks(execute=True):
            key, _ = _create_key(org, owner)
    finally:
        _client.cache_clear()
    assert key.pk is not None  # the database write stands; the periodic republish repairs Redis
    assert "periodic full republish will repair it" in caplog.text


def test_management_command_republishes(org, redis_client):
    from django.core.management import call_command

    call_command("publish_access_snapshot", "--full")
    assert _org_record(redis_client, org)["slug"] == "acme"


def test_ensure_published_repairs_an_emptied_redis(org, redis_client):
    from tenants.tasks import ensure_access_snapshot

    assert ensure_access_snapshot() is True  # nothing there yet: full publish
    assert _org_record(redis_client, org)["slug"] == "acme"
    assert ensure_access_snapshot() is False  # present: nothing to do
    for name in redis_client.scan_iter(match=snapshot.redis_key("*")):
        redis_client.delete(name)  # Redis restarted empty
    assert ensure_access_snapshot() is True
    assert _org_record(redis_client, org)["slug"] == "acme"
