"""A prepaid organisation through the real Ray Serve gateway: with a tiny balance it is served
until the balance is spent, then refused with 429 ``insufficient_quota`` (the openai SDK's
``RateLimitError``), and a concurrent burst at the empty balance never takes it below zero.
It uses the package's ``gateway`` deployment: a test module that deployed an application of its
own would replace the session's, and every later test module would find its models gone."""

from __future__ import annotations

import asyncio
import uuid
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import openai
import pytest
import redis.asyncio as aioredis
from django.conf import settings

from billing import prepaid, prepaid_services
from inference.serving.limits import Limiter
from inference.serving.money import to_micros
from tenants import services, snapshot
from tenants.models import ApiKey, BillingMode, Organization, Role
from tests.factories import CatalogModelFactory, OrganizationFactory, UserFactory
from tests.serving.conftest import SESSION_PREFIX

pytestmark = [pytest.mark.django_db, pytest.mark.ray]

MESSAGES = [{"role": "user", "content": "one two three"}]
# syn-fast's prices in the test deployment (tests/serving/conftest.py): per million tokens.
PRICE_IN, PRICE_OUT = Decimal(1), Decimal(2)


def _balance(org_id: str) -> Any:
    async def read() -> Any:
        client = aioredis.Redis.from_url(settings.REDIS_URL)
        try:
            return await Limiter(client, SESSION_PREFIX).balance(org_id)
        finally:
            await client.aclose()

    return asyncio.run(read())


def _ask(client: openai.OpenAI) -> Any:
    try:
        return client.chat.completions.create(model="syn-fast", messages=MESSAGES, max_tokens=8)
    except openai.RateLimitError as error:
        return error


def test_a_tiny_balance_is_spent_then_refused_with_insufficient_quota(
    gateway, django_capture_on_commit_callbacks
) -> None:  # type: ignore[no-untyped-def]
    CatalogModelFactory(name="syn-fast")
    org = OrganizationFactory()
    key, secret = services.api_key_create(
        organization=org, name="k", created_by=None, actor_role=Role.OWNER
    )
    snapshot.publish_organizations(Organization.objects.filter(pk=org.pk))
    snapshot.publish_keys(ApiKey.objects.filter(pk=key.pk))
    with django_capture_on_commit_callbacks(execute=True):  # publishes balance, then the record
        prepaid_services.billing_mode_set(org, BillingMode.PREPAID, UserFactory(is_staff=True))
    credit = Decimal("0.000100")  # a request reserves about 0.000025: a handful of requests
    prepaid.credit(org, credit, kind="topup", reference=f"checkout:{uuid.uuid4().hex}")
    prepaid.publish_balance(org)
    client = openai.OpenAI(base_url=f"{gateway.base_url}/v1", api_key=secret, max_retries=0)

    served: list[Any] = []
    refusal = None
    for _ in range(40):
        answer = _ask(client)
        if isinstance(answer, openai.RateLimitError):
            refusal = answer
            break
        served.append(answer)
    assert served, "the balance should pay for some requests first"
    assert refusal is not None, "the balance was never exhausted"
    assert refusal.status_code == 429
    assert refusal.code == "insufficient_quota"
    assert refusal.type == "insufficient_quota"
    assert "retry-after" not in refusal.response.headers

    # A burst at the exhausted balance: nothing more is admitted, nothing goes below zero.
    with ThreadPoolExecutor(max_workers=10) as pool:
        burst = list(pool.map(lambda _: _ask(client), range(20)))
    assert all(isinstance(b, openai.RateLimitError) for b in burst)

    state = _balance(str(org.pk))
    cost = sum(
        to_micros(
            (r.usage.prompt_tokens * PRICE_IN + r.usage.completion_tokens * PRICE_OUT) / 10**6
        )
        for r in served
    )
    assert state.used_micros + state.reserved_micros <= state.credited_micros == to_micros(credit)
    # Settles land right after each response; give the last one a moment.
    for _ in range(50):
        if state.reserved_micros == 0:
            break
        asyncio.run(asyncio.sleep(0.1))
        state = _balance(str(org.pk))
    assert state.reserved_micros == 0
    assert state.used_micros == cost
