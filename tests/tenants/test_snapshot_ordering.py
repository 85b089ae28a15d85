"""Publish ordering of the access snapshot against the real Redis: a publish that read the rows
before a change but writes after the change's own publish never brings the old state back.

A *delayed publish* is made by holding back the final write of one publish (``snapshot._write``)
after it has taken its version and read its rows, letting a revocation or a suspension commit
and publish, and then letting the held-back write go.
"""

import json
import time

import pytest

from tenants import keys, services, snapshot
from tenants.models import ApiKey, Organization, Role

pytestmark = [pytest.mark.django_db, pytest.mark.redis]


def _read(redis_client, name):
    raw = redis_client.get(name)
    return None if raw is None else json.loads(raw)


@pytest.fixture
def held_back(monkeypatch):
    """Make the next publish stop just before it writes; returns its pending writes."""
    real_write = snapshot._write
    pending = []

    def hold(client, version, records):
        pending.append((client, version, records))
        monkeypatch.setattr(snapshot, "_write", real_write)  # only the first publish is held
        return 0

    monkeypatch.setattr(snapshot, "_write", hold)

    def release():
        ((client, version, records),) = pending
        return real_write(client, version, records)

    return pending, release


@pytest.fixture
def active_key(org, owner, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        key, secret = services.api_key_create(
            organization=org, name="k", created_by=owner, actor_role=Role.OWNER
        )
    return key, snapshot.key_record_name(keys.hash_key(secret))


def test_a_delayed_key_publish_cannot_bring_back_a_revoked_key(
    owner, active_key, redis_client, held_back, django_capture_on_commit_callbacks
):
    key, name = active_key
    pending, release = held_back
    # A publish of the key reads it while it is still active (an update of its name, say)...
    assert snapshot.publish_keys(ApiKey.objects.filter(pk=key.pk)) == 0
    ((_, stale_version, [(_, stale_record, _)]),) = pending
    assert json.loads(stale_record)["status"] == "active"
    # ...then the key is revoked and the revocation's publish lands first.
    with django_capture_on_commit_callbacks(execute=True):
        services.api_key_revoke(api_key=key, actor_role=Role.OWNER, actor=owner)
    assert _read(redis_client, name)["status"] == "revoked"
    revoked_version = _read(redis_client, name)["version"]
    assert revoked_version > stale_version

    assert release() == 0  # the late write is refused...
    record = _read(redis_client, name)
    assert record["status"] == "revoked"  # ...and the key stays revoked
    assert record["version"] == revoked_version


def test_a_delayed_organisation_publish_cannot_lift_a_suspension(
    org, redis_client, held_back, django_capture_on_commit_callbacks
):
    name = snapshot.org_record_name(org.id)
    pending, release = held_back
    snapshot.publish_organizations(Organization.objects.filter(pk=org.pk))
    ((_, _, [(_, stale_record, _)]),) = pending
    assert json.loads(stale_record)["status"] == "active"
    with django_capture_on_commit_callbacks(execute=True):
        services.organization_set_status(organization=org, status=Organization.Status.SUSPENDED)
    assert _read(redis_client, name)["status"] == "suspended"

    assert release() == 0
    assert _read(redis_client, name)["status"] == "suspended"


def test_a_delayed_key_publish_loses_to_a_full_pass_that_saw_the_revocation(
    active_key, redis_client, held_back
):
    key, name = active_key
    pending, release = held_back
    snapshot.publish_keys(ApiKey.objects.filter(pk=key.pk))
    assert pending
    ApiKey.objects.filter(pk=key.pk).update(revoked_at=key.created_at)
    snapshot.publish_full()  # full and targeted writes follow the same rule
    assert release() == 0
    assert _read(redis_client, name)["status"] == "revoked"


def test_a_delayed_write_still_lands_when_nothing_newer_was_published(
    active_key, redis_client, held_back
):
    key, name = active_key
    redis_client.delete(name)
    _pending, release = held_back
    snapshot.publish_keys(ApiKey.objects.filter(pk=key.pk))
    assert redis_client.get(name) is None
    assert release() == 1
    assert _read(redis_client, name)["status"] == "active"


def test_the_version_is_taken_before_the_rows_are_read(org, redis_client, monkeypatch):
    """The order the correctness argument rests on (tenants.snapshot.publish_keys)."""
    events = []
    real_take, real_names = snapshot._take_version, snapshot.model_names_for_organization
    monkeypatch.setattr(
        snapshot, "_take_version", lambda client: events.append("version") or real_take(client)
    )
    monkeypatch.setattr(
        snapshot,
        "model_names_for_organization",
        lambda row: events.append("read") or real_names(row),
    )
    snapshot.publish_organizations(Organization.objects.filter(pk=org.pk))
    snapshot.publish_full()
    assert events == ["version", "read", "version", "read"]


def test_records_carry_increasing_versions_and_older_formats_are_replaced(
    org, active_key, redis_client
):
    key, name = active_key
    first = _read(redis_client, name)["version"]
    snapshot.publish_keys(ApiKey.objects.filter(pk=key.pk))
    assert _read(redis_client, name)["version"] > first
    # A record written before versions existed (only published_at) counts as older than any.
    redis_client.set(name, json.dumps({"status": "revoked", "published_at": "2999-01-01"}))
    assert snapshot.publish_keys(ApiKey.objects.filter(pk=key.pk)) == 1
    assert _read(redis_client, name)["status"] == "active"


def test_a_lost_counter_restarts_from_the_clock_not_from_one(redis_client):
    """Redis restarted empty while a publish held a version: versions taken afterwards must
    still be larger, or that publish's late write would outrank them all."""
    before_restart = snapshot._take_version(redis_client)
    redis_client.delete(snapshot.version_name())
    time.sleep(0.001)
    after_restart = snapshot._take_version(redis_client)
    assert after_restart > before_restart
    assert snapshot._take_version(redis_client) == after_restart + 1
