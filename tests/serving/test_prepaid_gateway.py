"""A prepaid organisation through the gateway (the class Serve runs, called in-process through
ASGI, no Ray; the synthetic engine, a labelled test engine, answers): the openai SDK sees 429
``insufficient_quota`` once the balance is spent; 200 concurrent requests against a small balance
never hold more than the credit and settle to the exact cost, in Redis and, once their usage
events are ingested, in Postgres; a balance Redis lost is a 503 ``balance_unavailable``; an
organisation suspended for an unpaid invoice gets 403 ``payment_suspended``."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis
import redis.asyncio as aioredis
from django.conf import settings
from django.utils import timezone
from fastapi import FastAPI, Request

from billing import prepaid, prepaid_services
from billing.ingest import ingest_events
from billing.post_ingest import after_batch
from inference.serving.engines.synthetic import SyntheticEngine
from inference.serving.gateway import Gateway
from inference.serving.limits import Limiter
from inference.serving.money import to_micros
from tenants import services, snapshot
from tenants.models import ApiKey, BillingMode, Organization, Role
from tests.factories import CatalogModelFactory, OrganizationFactory, UserFactory
from tests.serving.conftest import USAGE_QUEUE, usage_events

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.redis]

MODEL = "syn-prepaid"
PRICE_IN, PRICE_OUT = Decimal("1.000000"), Decimal("2.000000")  # per million tokens
MESSAGES = [{"role": "user", "content": "one two three"}]


class _Method:
    """What a Serve handle's method offers the gateway: ``remote(...)`` -> an awaitable that can
    be cancelled."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn

    def remote(self, *args: Any) -> asyncio.Task[Any]:
        return asyncio.get_running_loop().create_task(self.fn(*args))


class _Handle:
    def __init__(self, engine: SyntheticEngine) -> None:
        self.complete = _Method(lambda endpoint, body, priority: engine.complete(endpoint, body))


class _Broker:
    """The usage queue's Redis, as ``usage_events`` reads it."""

    def __init__(self, url: str) -> None:
        self.url = url

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)


@pytest.fixture
def queue() -> Iterator[str]:
    """The serving tests' usage queue (unique to the session), which ``usage_events`` reads."""
    yield USAGE_QUEUE
    redis.Redis.from_url(settings.REDIS_URL).delete(USAGE_QUEUE)


@pytest.fixture
def tenant(monkeypatch) -> tuple[Organization, str]:  # type: ignore[no-untyped-def]
    """A prepaid organisation with one key, published as the control plane publishes them."""
    monkeypatch.setenv("VLINDERS_KEY_PEPPER", settings.VLINDERS_KEY_PEPPER)
    CatalogModelFactory(name=MODEL)
    org = OrganizationFactory()
    key, secret = services.api_key_create(
        organization=org, name="k", created_by=None, actor_role=Role.OWNER
    )
    staff = UserFactory(is_staff=True)
    prepaid_services.billing_mode_set(org, BillingMode.PREPAID, staff)
    snapshot.publish_organizations(Organization.objects.filter(pk=org.pk))
    snapshot.publish_keys(ApiKey.objects.filter(pk=key.pk))
    return org, secret


def _gateway(tmp_path: Path, queue: str) -> Gateway:
    engine = SyntheticEngine(model=MODEL, default_max_tokens=16)
    args = {
        "spec_version": 1,
        "redis_url": settings.REDIS_URL,
        "redis_prefix": settings.VLINDERS_REDIS_PREFIX,
        "broker_url": settings.REDIS_URL,
        "usage_queue": queue,
        "usage_spool_dir": str(tmp_path / "spool"),
        "max_ongoing_requests": 256,
    }
    return Gateway(args, handle_factory=lambda name: (_Handle(engine), _Handle(engine)))


async def _start(gateway: Gateway) -> None:
    await gateway.reconfigure(
        {
            "revision": "r",
            "models": [
                {
                    "name": MODEL,
                    "deployment": f"model-{MODEL}",
                    "engine": "synthetic",
                    "context_length": 4096,
                    "price_input_per_mtok": str(PRICE_IN),
                    "price_output_per_mtok": str(PRICE_OUT),
                }
            ],
        }
    )


def _client(gateway: Gateway, secret: str) -> openai.AsyncOpenAI:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        return await gateway.handle(request, "chat.completions")

    transport = httpx.ASGITransport(app=app)
    return openai.AsyncOpenAI(
        base_url="http://gateway.test/v1",
        api_key=secret,
        max_retries=0,
        http_client=httpx.AsyncClient(transport=transport, base_url="http://gateway.test"),
    )


async def _drain(gateway: Gateway) -> None:
    """Wait for the settles (they run after each response, off its path)."""
    while gateway._background:
        await asyncio.gather(*list(gateway._background), return_exceptions=True)


def _cost(usage: Any) -> Decimal:
    return (usage.prompt_tokens * PRICE_IN + usage.completion_tokens * PRICE_OUT) / 10**6


def _balance(org: Organization) -> Any:
    async def read() -> Any:
        client = aioredis.Redis.from_url(settings.REDIS_URL)
        try:
            return await Limiter(client, settings.VLINDERS_REDIS_PREFIX).balance(str(org.pk))
        finally:
            await client.aclose()

    return asyncio.run(read())


def test_200_concurrent_requests_never_overdraw_and_settle_to_the_exact_cost(
    tenant, tmp_path, queue
) -> None:  # type: ignore[no-untyped-def]
    org, secret = tenant
    credit = Decimal("0.003000")  # about 100 of the requests below
    prepaid.credit(org, credit, kind="topup", reference=f"checkout:{uuid.uuid4().hex}")
    prepaid.publish_balance(org)
    rng = random.Random(7)
    max_tokens = [rng.randint(1, 16) for _ in range(200)]

    async def run() -> tuple[list[Any], int]:
        gateway = _gateway(tmp_path, queue)
        await _start(gateway)
        client = _client(gateway, secret)
        key = f"{settings.VLINDERS_REDIS_PREFIX}limits:v1:org:{org.pk}:balance"
        watch_client = aioredis.Redis.from_url(settings.REDIS_URL)
        done, worst = asyncio.Event(), 0

        async def watch() -> None:
            nonlocal worst
            while not done.is_set():
                used, reserved = await watch_client.hmget(key, "used_micros", "reserved_micros")
                worst = max(worst, int(used or 0) + int(reserved or 0))
                await asyncio.sleep(0)

        async def one(n: int) -> Any:
            try:
                return await client.chat.completions.create(
                    model=MODEL, messages=MESSAGES, max_tokens=n
                )
            except openai.RateLimitError as error:
                return error

        watcher = asyncio.create_task(watch())
        try:
            results = await asyncio.gather(*(one(n) for n in max_tokens))
            await _drain(gateway)
        finally:
            done.set()
            await watcher
            await watch_client.aclose()
            await client.close()
            await gateway.__del__()
        return results, worst

    results, worst = asyncio.run(run())
    served = [r for r in results if not isinstance(r, openai.RateLimitError)]
    refused = [r for r in results if isinstance(r, openai.RateLimitError)]
    assert served
    assert refused
    for error in refused:
        assert error.status_code == 429
        assert error.code == "insufficient_quota"
        assert error.type == "insufficient_quota"
        assert error.body["message"] == (
            "You exceeded your current quota, please check your plan and billing details."
        )
        assert "retry-after" not in error.response.headers  # waiting does not help

    state = _balance(org)
    assert worst <= to_micros(credit)  # never more held or used than credited
    assert state.reserved_micros == 0
    settled = sum(to_micros(_cost(r.usage)) for r in served)
    assert state.used_micros == settled  # exactly what the requests cost
    assert state.used_micros <= state.credited_micros

    # The usage events, ingested: Postgres agrees to the micro-unit, and the balance is not
    # below zero there either.
    events = usage_events(_Broker(settings.REDIS_URL), wait_for=lambda e: len(e) >= 200)
    prepaid_events = [e for e in events if e["org_id"] == str(org.pk)]
    assert len(prepaid_events) == 200  # the refusals are metered too, at no cost
    assert sum(e["status"] == 200 for e in prepaid_events) == len(served)
    after_batch(ingest_events(prepaid_events))
    assert prepaid.prepaid_usage(org) == sum((_cost(r.usage) for r in served), Decimal(0))
    assert prepaid.balance_of(org) >= 0
    state = _balance(org)
    assert state.used_micros == settled


def test_a_lost_balance_is_a_503_and_a_payment_suspension_a_403(tenant, tmp_path, queue) -> None:  # type: ignore[no-untyped-def]
    org, secret = tenant  # prepaid, with nothing credited yet

    async def ask() -> Any:
        gateway = _gateway(tmp_path, queue)
        await _start(gateway)
        client = _client(gateway, secret)
        try:
            return await client.chat.completions.create(
                model=MODEL, messages=MESSAGES, max_tokens=1
            )
        except openai.APIStatusError as error:
            return error
        finally:
            await _drain(gateway)
            await client.close()
            await gateway.__del__()

    error = asyncio.run(ask())
    assert isinstance(error, openai.RateLimitError)
    assert error.code == "insufficient_quota"

    # Redis lost the balance (restarted empty), and reconciliation has not rewritten it yet.
    key = f"{settings.VLINDERS_REDIS_PREFIX}limits:v1:org:{org.pk}:balance"
    assert redis.Redis.from_url(settings.REDIS_URL).delete(key) == 1
    error = asyncio.run(ask())
    assert isinstance(error, openai.InternalServerError)
    assert error.status_code == 503
    assert error.code == "balance_unavailable"
    assert error.response.headers["retry-after"] == "1"

    Organization.objects.filter(pk=org.pk).update(payment_suspended_at=timezone.now())
    snapshot.publish_organizations(Organization.objects.filter(pk=org.pk))
    error = asyncio.run(ask())
    assert isinstance(error, openai.PermissionDeniedError)
    assert error.code == "payment_suspended"
    assert "invoice is unpaid" in error.body["message"]
    assert "billing page" in error.body["message"]
