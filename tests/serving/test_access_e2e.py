"""A revoked, expired or suspended key stops working on every gateway replica within one second
of the control-plane change (contract 2), through the real publish path (after commit)."""

from __future__ import annotations

import time
from datetime import timedelta

import openai
import pytest
from django.utils import timezone

from tenants import services
from tenants.models import Organization, Role

pytestmark = [pytest.mark.django_db, pytest.mark.ray]

MESSAGE = [{"role": "user", "content": "x"}]
# The gateway runs 2 replicas; HAProxy spreads requests over both, so this many requests
# warm (and then probe) the cache of each of them.
PROBES = 24


def _client(gateway, secret):
    return openai.OpenAI(base_url=f"{gateway.base_url}/v1", api_key=secret, max_retries=0)


def _statuses(client, count=PROBES):
    out = []
    for _ in range(count):
        try:
            client.models.list()
            out.append(200)
        except openai.APIStatusError as error:
            out.append(error.status_code)
    return out


def _propagation(client, change, django_capture_on_commit_callbacks):
    """Warm every replica's cache, make the change (publishing after commit), and return how
    long it took until the key was refused."""
    assert _statuses(client) == [200] * PROBES
    with django_capture_on_commit_callbacks(execute=True):
        change()
    changed = time.monotonic()
    while True:
        try:
            client.models.list()
        except openai.AuthenticationError:
            return time.monotonic() - changed
        assert time.monotonic() - changed < 1.0, "the change did not reach the gateway in 1 s"


def test_revocation_reaches_every_replica_within_a_second(
    gateway, tenant, django_capture_on_commit_callbacks
):
    _org, key, secret = tenant
    client = _client(gateway, secret)
    owner = None
    delay = _propagation(
        client,
        lambda: services.api_key_revoke(api_key=key, actor_role=Role.OWNER, actor=owner),
        django_capture_on_commit_callbacks,
    )
    assert delay < 1.0
    # Every replica refuses it now (not just the one that answered first).
    assert _statuses(client) == [401] * PROBES


def test_suspension_reaches_every_replica_within_a_second(
    gateway, tenant, django_capture_on_commit_callbacks
):
    org, _, secret = tenant
    client = _client(gateway, secret)
    _propagation(
        client,
        lambda: services.organization_set_status(
            organization=org, status=Organization.Status.SUSPENDED
        ),
        django_capture_on_commit_callbacks,
    )
    assert _statuses(client) == [401] * PROBES
    with django_capture_on_commit_callbacks(execute=True):
        services.organization_set_status(organization=org, status=Organization.Status.ACTIVE)
    time.sleep(0.2)
    assert _statuses(client) == [200] * PROBES


def test_rotation_without_grace_swaps_keys_at_once(
    gateway, tenant, django_capture_on_commit_callbacks
):
    _, key, old_secret = tenant
    old = _client(gateway, old_secret)
    assert _statuses(old, 4) == [200] * 4
    with django_capture_on_commit_callbacks(execute=True):
        _, new_secret = services.api_key_rotate(api_key=key, actor_role=Role.OWNER, actor=None)
    time.sleep(0.2)
    assert _statuses(old) == [401] * PROBES
    assert _statuses(_client(gateway, new_secret)) == [200] * PROBES


def test_expired_key_is_refused_without_any_publish(gateway, make_tenant):
    _, _, secret = make_tenant(expires_at=timezone.now() + timedelta(seconds=2))
    client = _client(gateway, secret)
    assert _statuses(client, 4) == [200] * 4
    time.sleep(2.1)
    with pytest.raises(openai.AuthenticationError) as caught:
        client.models.list()
    assert caught.value.code == "expired_api_key"
