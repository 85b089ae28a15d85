"""An in-process gateway for the tests: the ``Gateway`` class that Ray Serve runs, built and
called without Ray.

It provides:

- :class:`InProcessGateway`: a gateway on the real Redis (the test settings' URL and prefix), its
  model handles replaced by :class:`Handle` (Serve's handle shape in front of the synthetic
  engine, a labelled test engine), the requests that reached each engine counted, its usage
  events, reservations and settles recorded instead of sent; :meth:`InProcessGateway.client`, the
  official ``openai`` SDK talking to it through ASGI; :meth:`InProcessGateway.run`, a scenario
  run on a configured gateway that is drained and closed afterwards, as Serve would stop it;
- :func:`rendered_config`, the gateway config that the control plane renders from the catalog
  now (the routes these tests exercise are the ones a real apply would send);
- :func:`publish_key`, a key of an organisation published to Redis as the control plane does.

Why: the tests of the response cache, weighted aliases and plan prices all drive the gateway
this way; each had written its own copy of these fakes, the ASGI client and the drain loop, and a
change to the gateway's handle or settle interface had to be made in every copy.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import httpx
import openai
import pytest
from django.conf import settings
from fastapi import FastAPI, Request

from inference.deployment import render_spec
from inference.serving.engines.synthetic import SyntheticEngine
from inference.serving.gateway import Gateway
from inference.serving.spec import DeploymentSpec
from inference.serving.usage import UsageEvent
from tenants import services, snapshot
from tenants.models import ApiKey, Organization, Role

T = TypeVar("T")


def rendered_config() -> dict[str, Any]:
    """The gateway config (its ``user_config``) that the control plane renders from the catalog
    now. Render it outside the event loop: the ORM is not for async code."""
    spec = DeploymentSpec.model_validate(render_spec())
    return spec.gateway_config().model_dump(mode="json")


def publish_key(org: Organization, **key_options: Any) -> str:
    """Make a key of ``org``, publish the organisation and the key, return the key's secret."""
    key, secret = services.api_key_create(
        organization=org, name="k", created_by=None, actor_role=Role.OWNER, **key_options
    )
    snapshot.publish_organizations(Organization.objects.filter(pk=org.pk))
    snapshot.publish_keys(ApiKey.objects.filter(pk=key.pk))
    return secret


class Stream:
    """A Serve streaming response's shape: ``__anext__`` gives lists of chunks; ``cancel``."""

    def __init__(self, chunks: AsyncIterator[dict[str, Any]]) -> None:
        self.chunks = chunks

    def __aiter__(self) -> Stream:
        return self

    async def __anext__(self) -> list[dict[str, Any]]:
        return [await self.chunks.__anext__()]

    def cancel(self) -> None:
        pass


class Method:
    """What a Serve handle's method offers the gateway: ``remote(...)``."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def remote(self, *args: Any) -> Any:
        return self.fn(*args)


async def fixed_embedding(body: dict[str, Any]) -> dict[str, Any]:
    """An embeddings response with a fixed vector whose last element is the input's word count
    (the synthetic engine serves no embeddings)."""
    words = len(str(body["input"]).split())
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.25, -0.5, float(words)]}],
        "model": body["model"],
        "usage": {"prompt_tokens": words, "total_tokens": words},
    }


class Handle:
    """One model's handle in front of its synthetic engine: ``complete.remote`` gives a task,
    ``stream.remote`` a :class:`Stream`. Each call is recorded in ``calls`` (its body) and
    ``served`` (the engine's model name) before it reaches the engine; with ``embeddings``,
    embeddings requests get :func:`fixed_embedding`."""

    def __init__(
        self,
        engine: SyntheticEngine,
        calls: list[dict[str, Any]],
        served: Counter[str],
        *,
        embeddings: bool = False,
    ) -> None:
        def record(body: dict[str, Any]) -> None:
            calls.append(body)
            served[engine.model] += 1

        def complete(endpoint: Any, body: dict[str, Any], priority: int) -> Any:
            record(body)
            if embeddings and endpoint == "embeddings":
                return asyncio.get_running_loop().create_task(fixed_embedding(body))
            return asyncio.get_running_loop().create_task(engine.complete(endpoint, body))

        def stream(endpoint: Any, body: dict[str, Any], priority: int) -> Stream:
            record(body)
            return Stream(engine.stream(endpoint, body).__aiter__())

        self.complete = Method(complete)
        self.stream = Method(stream)


class InProcessGateway:
    """A gateway replica in this process, on the real Redis and the test settings' prefix.

    ``engines`` answers every model: one engine for all deployments, or one per deployment name.
    ``config`` is what :meth:`configure` applies by default (e.g. :func:`rendered_config`). The
    usage events go to ``events`` instead of the broker; every reservation is recorded in
    ``reserved`` as (org_id, tokens, spend) and every settle in ``settled`` as (prompt_tokens,
    completion_tokens, spend), and both still run on Redis. ``gateway_args`` override the
    replica's arguments."""

    def __init__(
        self,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        engines: SyntheticEngine | Mapping[str, SyntheticEngine],
        *,
        config: dict[str, Any] | None = None,
        embeddings: bool = False,
        **gateway_args: Any,
    ) -> None:
        # The gateway hashes keys with the pepper from its environment, as a replica does.
        monkeypatch.setenv("VLINDERS_KEY_PEPPER", settings.VLINDERS_KEY_PEPPER)
        self.config = config
        self.calls: list[dict[str, Any]] = []
        self.served: Counter[str] = Counter()
        self.events: list[UsageEvent] = []
        self.reserved: list[tuple[str, int, Decimal]] = []
        self.settled: list[tuple[int, int, Decimal]] = []

        def handles(deployment: str) -> tuple[Handle, Handle]:
            engine = engines if isinstance(engines, SyntheticEngine) else engines[deployment]
            handle = Handle(engine, self.calls, self.served, embeddings=embeddings)
            return handle, handle

        self.gateway = Gateway(
            {
                "spec_version": 1,
                "redis_url": settings.REDIS_URL,
                "redis_prefix": settings.VLINDERS_REDIS_PREFIX,
                "broker_url": settings.REDIS_URL,
                "usage_spool_dir": str(tmp_path / "spool"),
                "max_ongoing_requests": 64,
                **gateway_args,
            },
            handle_factory=handles,
        )
        self.gateway.usage.emit = self.events.append  # type: ignore[method-assign]
        reserve, settle = self.gateway.limiter.reserve, self.gateway.settles.settle

        async def spy_reserve(**kwargs: Any) -> Any:
            self.reserved.append((kwargs["org_id"], kwargs["tokens"], kwargs["spend"]))
            return await reserve(**kwargs)

        async def spy_settle(reservation: Any, **kwargs: Any) -> Any:
            self.settled.append(
                (kwargs["prompt_tokens"], kwargs["completion_tokens"], kwargs["spend"])
            )
            return await settle(reservation, **kwargs)

        self.gateway.limiter.reserve = spy_reserve  # type: ignore[method-assign]
        self.gateway.settles.settle = spy_settle  # type: ignore[method-assign]

    def client(self, secret: str) -> openai.AsyncOpenAI:
        """The openai SDK with ``secret``, talking to the gateway through ASGI (chat completions,
        embeddings and the models list, routed as the gateway's Serve ingress routes them)."""
        gateway = self.gateway
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> Any:
            return await gateway.handle(request, "chat.completions")

        @app.post("/v1/embeddings")
        async def embeddings(request: Request) -> Any:
            return await gateway.handle(request, "embeddings")

        @app.get("/v1/models")
        async def models(request: Request) -> Any:
            return await gateway.list_models(request)

        @app.get("/v1/models/{model:path}")
        async def model(request: Request, model: str) -> Any:
            return await gateway.get_model(request, model)

        return openai.AsyncOpenAI(
            base_url="http://gateway.test/v1",
            api_key=secret,
            max_retries=0,
            http_client=httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://gateway.test"
            ),
        )

    async def configure(self, config: dict[str, Any] | None = None) -> None:
        """Apply a gateway config (by default ``self.config``), as Serve applies a user_config."""
        chosen = config or self.config
        assert chosen is not None, "no gateway config to apply"
        await self.gateway.reconfigure(chosen)

    async def drain(self) -> None:
        """Wait for the work that runs after each response (settles, cache stores)."""
        while self.gateway._background:
            await asyncio.gather(*list(self.gateway._background), return_exceptions=True)

    async def close(self) -> None:
        """Drain, then stop the replica as Serve stops it (``__del__``)."""
        await self.drain()
        await self.gateway.__del__()

    def run(
        self, scenario: Callable[[], Awaitable[T]], *, config: dict[str, Any] | None = None
    ) -> T:
        """On a new event loop: configure (``config`` or ``self.config``), run ``scenario``,
        then close the gateway whatever happened; the scenario's result."""

        async def main() -> T:
            await self.configure(config)
            try:
                return await scenario()
            finally:
                await self.close()

        return asyncio.run(main())
