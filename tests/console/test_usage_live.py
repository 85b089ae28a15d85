"""Live usage over websockets, end to end: after_batch → the real Redis channel layer → the
console's consumers behind the real ASGI stack (origin check, session cookie, auth)."""

from __future__ import annotations

from decimal import Decimal

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.test import Client
from django.utils import timezone

from billing.ingest_result import IngestResult
from billing.post_ingest import after_batch
from tenants.models import Role
from tests.billing.usage_data import add_rollup, channel_layer, make_key  # noqa: F401
from tests.factories import MembershipFactory, OrganizationFactory, UserFactory

# The consumers read the database from their own threads: the test data must be committed.
pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.redis,
    pytest.mark.usefixtures("channel_layer"),
]


def _headers(user=None):
    """A browser's handshake headers: an allowed origin and, signed in, the session cookie."""
    headers = [(b"origin", b"http://localhost")]
    if user is not None:
        client = Client()
        client.force_login(user)
        session = client.cookies[settings.SESSION_COOKIE_NAME].value
        headers.append((b"cookie", f"{settings.SESSION_COOKIE_NAME}={session}".encode()))
    return headers


def _socket(path, headers):
    from vlinders.asgi import application

    return WebsocketCommunicator(application, path, headers=headers)


def _batch(org, *, requests, prompt, completion, cost):
    """Rollups of one batch in the current hour and the IngestResult that batch reports."""
    result = IngestResult()
    hour = timezone.now().replace(minute=0, second=0, microsecond=0)
    add_rollup(
        make_key(org),
        hour,
        requests=requests,
        prompt=prompt,
        completion=completion,
        cost=cost,
        result=result,
    )
    return result


def _connect(path, user):
    headers = _headers(user)

    async def go():
        socket = _socket(path, headers)
        connected, code = await socket.connect()
        await socket.disconnect()
        return connected, code

    return async_to_sync(go)()


def test_a_member_receives_its_organisations_update_and_nothing_of_others(org, viewer):
    other = OrganizationFactory()
    stranger = MembershipFactory(organization=other, user=UserFactory(), role=Role.OWNER).user
    earlier = IngestResult()  # usage already this month, from an earlier batch
    add_rollup(
        make_key(org),
        timezone.now().replace(minute=0, second=0, microsecond=0),
        model="m0",
        cost="2",
        prompt=1,
        result=earlier,
    )
    result = _batch(org, requests=3, prompt=30, completion=12, cost="0.000042")

    mine_headers, their_headers = _headers(viewer), _headers(stranger)

    async def scenario():
        mine = _socket(f"/ws/orgs/{org.pk}/usage/", mine_headers)
        theirs = _socket(f"/ws/orgs/{other.pk}/usage/", their_headers)
        assert (await mine.connect())[0]
        assert (await theirs.connect())[0]
        await sync_to_async(after_batch)(result)
        update = await mine.receive_json_from(timeout=5)
        assert await theirs.receive_nothing(timeout=0.3)
        await mine.disconnect()
        await theirs.disconnect()
        return update

    update = async_to_sync(scenario)()

    assert update["type"] == "usage.update"
    assert update["org_id"] == str(org.pk)
    assert (update["requests"], update["tokens"], update["spend"]) == (3, 42, "0.000042")
    assert update["requests_per_second"] == round(3 / update["window_seconds"], 3)
    assert update["tokens_per_second"] == round(42 / update["window_seconds"], 3)
    assert update["month"] == f"{timezone.now():%Y-%m}"
    assert Decimal(update["month_spend"]) == Decimal("2.000042")
    assert update["month_tokens"] == 1 + 42


def test_staff_receive_the_summary_of_every_organisation(org, staff):
    other = OrganizationFactory(slug="other")
    result = _batch(org, requests=2, prompt=5, completion=5, cost="0.5")
    second = _batch(other, requests=1, prompt=1, completion=0, cost="0.25")
    result.by_org |= second.by_org
    result.keys |= second.keys
    result.inserted += second.inserted

    headers = _headers(staff)

    async def scenario():
        socket = _socket("/ws/staff/usage/", headers)
        assert (await socket.connect())[0]
        await sync_to_async(after_batch)(result)
        summary = await socket.receive_json_from(timeout=5)
        await socket.disconnect()
        return summary

    summary = async_to_sync(scenario)()

    assert summary["type"] == "usage.summary"
    assert (summary["requests"], summary["tokens"], summary["spend"]) == (3, 11, "0.75")
    assert sorted(o["slug"] for o in summary["organizations"]) == ["acme", "other"]


def test_staff_may_watch_any_organisation(org, staff):
    assert _connect(f"/ws/orgs/{org.pk}/usage/", staff) == (True, None)


def test_outsiders_and_anonymous_are_refused(org, outsider, viewer):
    assert _connect(f"/ws/orgs/{org.pk}/usage/", outsider) == (False, 4404)
    assert _connect(f"/ws/orgs/{org.pk}/usage/", None) == (False, 4401)
    assert _connect("/ws/staff/usage/", None) == (False, 4401)
    assert _connect("/ws/staff/usage/", viewer) == (False, 4403)
    unknown = "00000000-0000-0000-0000-000000000000"
    assert _connect(f"/ws/orgs/{unknown}/usage/", viewer) == (False, 4404)


def test_a_foreign_origin_is_refused(org, viewer):
    headers = [(k, b"https://evil.example" if k == b"origin" else v) for k, v in _headers(viewer)]

    async def go():
        socket = _socket(f"/ws/orgs/{org.pk}/usage/", headers)
        connected, _ = await socket.connect()
        await socket.disconnect()
        return connected

    assert async_to_sync(go)() is False


def test_a_dashboard_stays_connected_past_the_channel_layers_blocking_read(org, staff):
    """channels_redis waits for messages with a blocking BZPOPMIN of ``brpop_timeout`` (5 s);
    the Redis client's read timeout must be longer, or every idle dashboard is dropped after
    five seconds (redis-py 8 reads with a 5 s ``socket_timeout`` by default)."""
    result = _batch(org, requests=1, prompt=1, completion=1, cost="0.1")
    headers = _headers(staff)

    async def scenario():
        socket = _socket("/ws/staff/usage/", headers)
        assert (await socket.connect())[0]
        assert await socket.receive_nothing(timeout=7)  # idle past one blocking read
        await sync_to_async(after_batch)(result)
        summary = await socket.receive_json_from(timeout=5)
        await socket.disconnect()
        return summary

    assert async_to_sync(scenario)()["requests"] == 1
