"""The playground's credentials (``tenants.console_credentials``): minted for a member, reused
while they last, renewed in place, published to the access snapshot, never more than the member
may have, and kept out of people's hands (encrypted in Redis, refused to manual changes)."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from tenants import console_credentials as cc
from tenants import keys, services, snapshot
from tenants.models import ApiKey, AuditEvent, Role
from tenants.selectors import console_key_ids

pytestmark = [pytest.mark.django_db, pytest.mark.redis]


@pytest.fixture
def issue(django_capture_on_commit_callbacks, redis_client, org):  # type: ignore[no-untyped-def]
    """Issue as the view does: the commit's callbacks (snapshot publish, storing the secret) run."""

    def run(user, organization=org):  # type: ignore[no-untyped-def]
        with django_capture_on_commit_callbacks(execute=True):
            return cc.console_credential_issue(organization=organization, user=user)

    return run


def _record(redis_client, secret):  # type: ignore[no-untyped-def]
    raw = redis_client.get(snapshot.key_record_name(keys.hash_key(secret)))
    return None if raw is None else json.loads(raw)


def test_a_member_gets_an_inference_only_console_key_of_their_own(issue, org, member):
    before = timezone.now()
    credential = issue(member)
    key = ApiKey.objects.get()
    assert credential.issued is True
    assert credential.api_key.pk == key.pk
    assert key.source == ApiKey.Source.CONSOLE
    assert key.name == "Console playground · member"
    assert key.created_by == member
    assert key.organization == org
    assert key.scopes == ["inference"]
    assert key.allowed_models == []
    assert keys.matches(credential.secret, key.secret_hash)
    assert key.expires_at is not None
    assert before + timedelta(minutes=14) < key.expires_at <= timezone.now() + timedelta(minutes=15)
    # The console's own limits, inside the organisation's.
    assert (key.requests_per_minute, key.max_concurrent_requests) == (30, 2)
    created = AuditEvent.objects.get(action="api_key.created")
    assert (created.actor, created.target_id) == (member, str(key.pk))
    assert created.after["source"] == "console"
    assert credential.secret not in json.dumps(created.after)
    assert credential.secret not in repr(credential)


def test_the_credential_is_in_the_access_snapshot_when_issue_returns(issue, member, redis_client):
    credential = issue(member)
    record = _record(redis_client, credential.secret)
    assert record is not None
    assert record["key_id"] == str(credential.api_key.pk)
    assert record["status"] == "active"
    assert record["scopes"] == ["inference"]
    assert record["expires_at"] == credential.api_key.expires_at.isoformat()
    assert record["limits"]["requests_per_minute"] == 30


def test_a_still_valid_credential_is_reused(issue, member):
    first = issue(member)
    second = issue(member)
    assert second.issued is False
    assert second.secret == first.secret
    assert second.api_key.pk == first.api_key.pk
    assert ApiKey.objects.count() == 1
    assert AuditEvent.objects.filter(action__startswith="api_key.").count() == 1


def test_the_secret_is_stored_encrypted_and_expires_with_the_credential(
    issue, member, redis_client
):
    credential = issue(member)
    name = cc._store_name(credential.api_key.pk)
    raw = redis_client.get(name)
    assert raw is not None
    assert credential.secret.encode() not in raw
    assert 0 < redis_client.ttl(name) <= 15 * 60


def test_a_credential_about_to_expire_is_renewed_in_place(issue, member, redis_client):
    first = issue(member)
    ApiKey.objects.filter(pk=first.api_key.pk).update(
        expires_at=timezone.now() + timedelta(seconds=60)
    )
    renewed = issue(member)
    key = ApiKey.objects.get()
    assert renewed.issued is True
    assert renewed.api_key.pk == first.api_key.pk  # the same row: one per member, for good
    assert renewed.secret != first.secret
    assert keys.matches(renewed.secret, key.secret_hash)
    assert key.expires_at > timezone.now() + timedelta(minutes=14)
    assert _record(redis_client, renewed.secret)["key_id"] == str(key.pk)
    event = AuditEvent.objects.get(action="api_key.renewed")
    assert event.actor == member
    assert set(event.before) >= {"prefix", "last_four", "expires_at"}
    assert renewed.secret not in json.dumps([event.before, event.after])
    assert key.secret_hash not in json.dumps([event.before, event.after])


def test_an_expired_credential_is_renewed(issue, member):
    first = issue(member)
    ApiKey.objects.filter(pk=first.api_key.pk).update(
        expires_at=timezone.now() - timedelta(hours=3)
    )
    renewed = issue(member)
    assert renewed.issued is True
    assert renewed.api_key.status == ApiKey.Status.ACTIVE
    assert ApiKey.objects.count() == 1


def test_a_lost_secret_is_renewed_not_reused(issue, member):
    first = issue(member)
    cc.console_credential_forget(first.api_key.pk)
    again = issue(member)
    assert again.issued is True
    assert again.secret != first.secret


def test_a_secret_that_no_longer_matches_the_row_is_not_used(issue, member, redis_client):
    first = issue(member)
    redis_client.set(
        cc._store_name(first.api_key.pk), cc._cipher().encrypt(keys.generate().plaintext.encode())
    )
    again = issue(member)
    assert again.issued is True
    assert keys.matches(again.secret, ApiKey.objects.get().secret_hash)


@pytest.mark.parametrize("who", ["viewer", "outsider"])
def test_viewers_and_outsiders_get_no_credential(issue, request, who):
    with pytest.raises(PermissionDenied):
        issue(request.getfixturevalue(who))
    assert not ApiKey.objects.exists()


@pytest.mark.parametrize("who", ["owner", "member", "staff"])
def test_members_and_up_get_one_staff_as_owners(issue, request, who):
    assert issue(request.getfixturevalue(who)).api_key.scopes == ["inference"]


def test_a_demoted_member_gets_nothing_more(issue, org, member):
    issue(member)
    org.memberships.filter(user=member).update(role=Role.VIEWER)
    with pytest.raises(PermissionDenied):
        issue(member)


def test_the_console_limits_only_tighten_the_organisations(issue, org, member, settings):
    org.requests_per_minute = 10
    org.save()
    settings.VLINDERS_CONSOLE_CREDENTIAL_LIMITS = {
        "requests_per_minute": 30,
        "tokens_per_minute": 5000,
    }
    key = issue(member).api_key
    assert key.requests_per_minute == 10
    assert key.tokens_per_minute == 5000
    assert key.max_concurrent_requests is None


def test_each_member_has_their_own_and_organisations_are_apart(issue, org, owner, member):
    mine, theirs = issue(member), issue(owner)
    assert mine.api_key.pk != theirs.api_key.pk
    assert theirs.api_key.name == "Console playground · owner"


def test_a_revoked_credential_is_replaced_by_a_new_row(issue, org, member, owner):
    first = issue(member)
    services.api_key_revoke(api_key=first.api_key, actor_role=Role.OWNER, actor=owner)
    second = issue(member)
    assert second.api_key.pk != first.api_key.pk
    assert ApiKey.objects.filter(source=ApiKey.Source.CONSOLE).count() == 2


def test_one_live_console_credential_per_member_is_a_database_rule(issue, org, member):
    first = issue(member)
    clone = ApiKey(
        organization=org,
        name="second",
        created_by=member,
        prefix="x" * 12,
        last_four="abcd",
        secret_hash="0" * 64,
        source=ApiKey.Source.CONSOLE,
    )
    with pytest.raises(IntegrityError), transaction.atomic():
        clone.save()
    assert first.api_key.pk


def test_nobody_changes_or_rotates_a_console_credential_by_hand(issue, member, owner):
    key = issue(member).api_key
    with pytest.raises(ValidationError, match="console playground credential"):
        services.api_key_update(api_key=key, actor_role=Role.OWNER, actor=owner, name="mine now")
    with pytest.raises(ValidationError, match="console playground credential"):
        services.api_key_rotate(api_key=key, actor_role=Role.OWNER, actor=owner)
    key.refresh_from_db()
    assert key.name == "Console playground · member"


def test_console_key_ids_selects_the_console_keys_only(issue, org, owner, member):
    console = issue(member).api_key
    personal, _ = services.api_key_create(
        organization=org, name="ci", created_by=owner, actor_role=Role.OWNER
    )
    assert personal.source == ApiKey.Source.API
    assert list(console_key_ids(org).values_list("pk", flat=True)) == [console.pk]
    assert ApiKey.objects.filter(pk__in=console_key_ids(org)).get() == console
