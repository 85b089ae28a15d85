"""The gateway: the OpenAI-compatible ingress of the data plane.

For every request: a request id of its own; the body read under a size limit; the key
authorised from the access snapshot (contract 2); the body validated; the model routed (aliases
included); tokens and spend reserved by the limiter (contract 3); the model server called; the
reservation settled with the engine's own counts; one usage event emitted (contract 4); metrics
recorded. Every refusal is an OpenAI-shaped error (``errors.ApiError``).

Two ids: Ray Serve puts ``x-request-id`` on every response (the client's own, if it sent one, or
one Ray generated), and the gateway keeps it as ``http_request_id`` for correlation. The usage
event's ``request_id``, on which metering deduplicates, is the gateway's own (``req_…``), never
taken from the client: a client that reused an ``x-request-id`` must not make a request free.

The gateway class is plain Python; ``app.py`` turns it into a Ray Serve deployment.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.exceptions import (
    BackPressureError,
    DeploymentUnavailableError,
    ReplicaUnavailableError,
)
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from inference.serving import errors, logs, metrics, requests, splits
from inference.serving.access import AccessCache, Principal
from inference.serving.leases import LeaseKeeper
from inference.serving.limits import Limiter, LimiterUnavailable, Refusal, Reservation
from inference.serving.logs import route_to_serve_logs
from inference.serving.model_server import LocalModel, UnavailableModel
from inference.serving.pricing import Prices
from inference.serving.redis_packing import HiredisPackingConnection
from inference.serving.response_cache import CacheState, ResponseCache
from inference.serving.settle_journal import SettleJournal
from inference.serving.spec import (
    ROUTER_INGRESS_DEPLOYMENT,
    GatewayArgs,
    GatewayConfig,
    ModelArgs,
    RouteSpec,
)
from inference.serving.sse import sse, usage_chunk
from inference.serving.usage import UsageEmitter, UsageEvent

logger = logging.getLogger(__name__)

# How long a request waits for a free Redis connection before the pool gives up (then: 503).
REDIS_POOL_WAIT_S = 5.0
# Connections beyond one per request in flight (see ``redis_pool_size``).
REDIS_POOL_HEADROOM = 32
# How long a Redis reply may take before the call is retried once (then: 503). The wait is
# measured on the replica's event loop, which resumes a waiting call late when it is busy: with
# 2 s, 1,000 concurrent streams on a 2-core machine timed out 5-12% of their reserves although
# Redis had answered within milliseconds (each retried; see ``redis_client``). A Redis that
# refuses connections is still found at once; only one that accepts and never answers takes this
# long.
REDIS_SOCKET_TIMEOUT_S = 5.0
REDIS_CONNECT_TIMEOUT_S = 2.0
# A model server that cannot take a request (its replicas gone, being replaced): the client is
# asked to retry after this long.
MODEL_UNAVAILABLE_RETRY_S = 2
# A request that timed out without an answer (possibly waiting for a cold start that did not
# finish in time: the replica keeps starting) is asked to retry after this long.
COLD_START_RETRY_S = 10
# The access line of every successful request (``VLINDERS_ACCESS_LOG=1`` in the Ray cluster's
# environment): off by default, since the usage event carries the same fields and Serve writes
# its own access line; a refused or failed request's line is always written.
ACCESS_LOG = os.environ.get("VLINDERS_ACCESS_LOG", "0") == "1"
# How often gauges fed from components' counters are refreshed.
GAUGE_INTERVAL_S = 5.0
# What the engine side may raise when a model's replicas are gone or not there yet.
_MODEL_UNAVAILABLE = (
    DeploymentUnavailableError,
    ReplicaUnavailableError,
    RayActorError,
    ActorUnavailableError,
)

api = FastAPI(title="Vlinders gateway", docs_url=None, redoc_url=None, openapi_url=None)


@dataclass
class Call:
    """What the gateway knows about one request as it goes; becomes the usage event."""

    request_id: str
    endpoint: requests.Endpoint
    http_request_id: str | None = None
    started: float = field(default_factory=time.perf_counter)
    started_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    principal: Principal | None = None
    model: str = ""
    target: RouteSpec | None = None
    prices: Prices | None = None  # what this request is charged at: decided once, when routed
    stream: bool = False
    cache: CacheState | None = None  # the response cache applies (docs/response-cache.md)
    reservation: Reservation | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    usage_known: bool = False
    ttft: float | None = None
    finish_reason: str | None = None
    status: int = 200
    error_type: str | None = None
    error_code: str | None = None
    in_flight: bool = False
    reserved_prompt: int = 0
    reserved_completion: int = 0
    chunks_relayed: int = 0
    relayed_any: bool = False  # the engine produced an answer or a stream chunk
    relaying: bool = False  # the stream's body generator has started
    settled: bool = False
    # The response's ``model``: the name asked, or for a weighted alias the target that served
    # it (``splits.py``), so the client can tell the arms apart.
    reply_model: str = ""


def redis_pool_size(max_ongoing_requests: int) -> int:
    """Connections of a replica's Redis pool: one for every request the replica may hold at
    once (each uses at most one at a time: a script or a GET), plus headroom for what runs
    beside them (settles finishing after their response, lease renewals, the pub/sub listener).

    Smaller pools were measured too small: with a quarter (256 for 1,024 requests), 1,000
    concurrent streams on a busy 2-core machine kept connections checked out while the event
    loop was slow to resume their holders, and 250 requests waited past the pool's timeout.
    Past the pool, a call waits (up to ``REDIS_POOL_WAIT_S``) instead of failing."""
    return max_ongoing_requests + REDIS_POOL_HEADROOM


def redis_client(redis_url: str, max_ongoing_requests: int) -> aioredis.Redis:
    """A replica's Redis client, shared by the access cache, the limiter and the lease keeper.

    A bounded pool that waits: redis-py's default pool raises "Too many connections" as soon as
    100 are in use, which turned bursts into 503s and lost settles. One quick retry rides out a
    blip; redis-py's default (three, backing off to seconds) held each request ~4.5 s before a
    real outage's 503. A retry may repeat a call that Redis already ran (its reply came after the
    socket timeout), so every script the replica runs is idempotent, the reserve included
    (``Limiter.reserve``). Commands are encoded by hiredis (``redis_packing.py``; a ``rediss://``
    or ``unix://`` URL keeps redis-py's own connection class for its transport)."""
    return aioredis.Redis(
        connection_pool=aioredis.BlockingConnectionPool.from_url(
            redis_url,
            connection_class=HiredisPackingConnection,
            max_connections=redis_pool_size(max_ongoing_requests),
            timeout=REDIS_POOL_WAIT_S,
            socket_timeout=REDIS_SOCKET_TIMEOUT_S,
            socket_connect_timeout=REDIS_CONNECT_TIMEOUT_S,
            health_check_interval=10,
            retry=Retry(ExponentialBackoff(cap=0.1, base=0.01), 1),
        )
    )


def model_handle(deployment: str) -> tuple[Any, Any]:
    """The Serve handles (plain, streaming) of a model's application, by name. Resolved once
    per model and reused for every request."""
    from ray.serve.handle import DeploymentHandle

    # A handle of its own, not ``serve.get_deployment_handle``'s: that one is cached per process
    # by name, with the request router it was built with, so after a change of router
    # (``Gateway._rehandle``) it would hand back the old router again. Not checked against the
    # controller either: an apply that adds a model reconfigures the gateway while the model's
    # application is still being created, and a failed check would make the reconfigure fail
    # and Serve replace the gateway's replicas. Requests to a model that is not up yet wait for
    # it, within the model's request timeout. The streaming handle shares the plain one's router.
    handle: Any = DeploymentHandle(deployment, deployment)
    return _Methods(handle), _Methods(handle.options(stream=True))


def router_settled(app: str, router: str) -> bool:
    """Whether a model's application has been rebuilt for ``router``: RUNNING, with the stub
    ingress that a router of its own needs (``routers.py``) exactly when ``router`` is not
    Serve's default. Blocking (it asks Serve's controller): run it in a thread."""
    from ray import serve

    status = serve.status().applications.get(app)
    if status is None or status.status != "RUNNING":
        return False
    return (ROUTER_INGRESS_DEPLOYMENT in status.deployments) == (router != "default")


class _Methods:
    """A Serve handle whose method handles (``handle.complete``: a new handle made by
    ``options`` at each attribute access) are made once, on first use, and then reused."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._handle, name)
        setattr(self, name, method)
        return method


class Gateway:
    """One gateway replica.

    ``args`` (``GatewayArgs``) are fixed for the replica's life; the routes arrive through
    :meth:`reconfigure` (Serve's ``user_config``) and change in place. ``handle_factory`` maps a
    model's deployment name to its (plain, streaming) handles; Serve's by default.
    """

    def __init__(
        self,
        args: dict[str, Any],
        handle_factory: Any = model_handle,
        settled: Callable[[str, str], bool] = router_settled,
    ) -> None:
        route_to_serve_logs()
        self.args = GatewayArgs.model_validate(args)
        self.config = GatewayConfig(revision="")
        self.routes: dict[str, RouteSpec] = {}
        self.weighted: dict[str, splits.WeightedAlias] = {}
        self.handles: dict[str, tuple[Any, Any]] = {}
        # ``openai`` models' engines, run in this process (``_local_models``), by deployment.
        self.local: dict[str, LocalModel] = {}
        self._retiring: dict[asyncio.Task[None], LocalModel] = {}
        self._handle_factory = handle_factory
        self._settled = settled
        # Per deployment: the task waiting to give a model whose router changed a new handle.
        self._rehandling: dict[str, asyncio.Task[None]] = {}
        pepper = os.environ.get("VLINDERS_KEY_PEPPER")
        if not pepper:
            raise RuntimeError(
                "VLINDERS_KEY_PEPPER is not set in the Ray cluster's environment: the gateway "
                "cannot hash API keys (docs/deployment-spec.md)."
            )
        self.redis = redis_client(self.args.redis_url, self.args.max_ongoing_requests)
        self.access = AccessCache(
            self.redis,
            prefix=self.args.redis_prefix,
            pepper=pepper,
            ttl=self.config.access_cache_ttl_s,
        )
        self.limiter = Limiter(self.redis, self.args.redis_prefix, lease_seconds=self.args.lease_s)
        self.cache = ResponseCache(self.redis, self.args.redis_prefix)
        # Renews the leases of requests in flight: a generation longer than a lease keeps its
        # concurrency slot and reservation, and is settled correctly.
        self.leases = LeaseKeeper(self.limiter)
        # A settle that Redis fails is journalled to disk (beside the usage spool) and retried
        # until it lands, never dropped; its lease is kept alive meanwhile.
        self.settles = SettleJournal(self.limiter, Path(self.args.usage_spool_dir) / "settles")
        self.usage = UsageEmitter(
            broker_url=self.args.broker_url,
            task_name=self.args.usage_task,
            spool_dir=self.args.usage_spool_dir,
            queue=self.args.usage_queue,
        )
        self._started = False
        self._background: set[asyncio.Task[Any]] = set()
        self._gauges: asyncio.Task[None] | None = None

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Take a new routing config (routes, aliases, prices, timeouts) without a restart.

        Serve calls this before the replica serves its first request and again on every apply
        that changes the config. Requests already running keep the route they started with.
        Async so that it runs on the replica's event loop, where Serve's handles are made.
        Handles are kept for models that stay and made for new ones; a refused config raises,
        and Serve keeps the previous one."""
        config = GatewayConfig.model_validate(user_config)
        routes = config.routes()
        local = await self._local_models(config)
        handles = {
            model.deployment: local[model.deployment].handles()
            if model.deployment in local
            else (
                self.handles.get(model.deployment) if model.deployment not in self.local else None
            )
            or self._handle_factory(model.deployment)
            for model in config.models
        }
        retired = [model for name, model in self.local.items() if local.get(name) is not model]
        routers_before = {model.deployment: model.request_router for model in self.config.models}
        self.config, self.routes, self.handles, self.local = config, routes, handles, local
        for route in config.models:
            before = routers_before.get(route.deployment)
            if route.deployment not in local and before not in (None, route.request_router):
                self._rehandle(route.deployment, route.request_router)
        for deployment in [d for d in self._rehandling if d not in handles or d in local]:
            self._rehandling.pop(deployment).cancel()  # no longer a model served by a handle
        for model in retired:
            # Requests already running keep their engine until they are done.
            task = asyncio.get_running_loop().create_task(
                _close_later(model, self.config_timeout_s)
            )
            self._retiring[task] = model
            task.add_done_callback(self._retiring.pop)
        self.weighted = splits.weighted_aliases(
            config.aliases, {model.name: model for model in config.models}
        )
        self.access.ttl = config.access_cache_ttl_s
        logger.info(
            "routing config %s: %d models, %d public names",
            config.revision[:12],
            len(config.models),
            len(routes),
        )

    def _rehandle(self, deployment: str, router: str) -> None:
        """Give ``deployment`` a new handle once its application runs with ``router``.

        A Serve handle builds its request router once, from the first deployment config it
        receives, and keeps it: a replica's handle made before a change of router would route
        with the old one for the replica's whole life. The old handle serves meanwhile (the
        model answers throughout its rebuild); a handle made before the rebuild could get the
        old config first, so the new one is made only when the application is RUNNING in the
        new router's shape (:func:`router_settled`)."""
        if (previous := self._rehandling.get(deployment)) is not None:
            previous.cancel()  # a newer change: wait for that one instead
        waiting = self._rehandle_when_settled(deployment, router)
        self._rehandling[deployment] = asyncio.get_running_loop().create_task(waiting)

    async def _rehandle_when_settled(
        self, deployment: str, router: str, *, interval: float = 1.0, give_up_s: float = 1800.0
    ) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + give_up_s
        try:
            while loop.time() < deadline:
                try:
                    settled = await asyncio.to_thread(self._settled, deployment, router)
                except Exception as error:  # the controller briefly unreachable: ask again
                    logger.warning("model %s: router status unknown: %s", deployment, error)
                    settled = False
                if settled:
                    if deployment in self.handles and deployment not in self.local:
                        self.handles[deployment] = self._handle_factory(deployment)
                        logger.info("model %s: new handle for router %s", deployment, router)
                    return
                await asyncio.sleep(interval)
            logger.warning(
                "model %s: its application did not run with request router %s within %.0f s; "
                "this replica keeps routing it as before",
                deployment,
                router,
                give_up_s,
            )
        finally:
            if self._rehandling.get(deployment) is asyncio.current_task():
                del self._rehandling[deployment]

    @property
    def config_timeout_s(self) -> float:
        """The longest request timeout of the routes: how long a retired engine is kept."""
        return max((model.request_timeout_s for model in self.config.models), default=300.0)

    async def _local_models(self, config: GatewayConfig) -> dict[str, LocalModel]:
        """The in-process engines of ``config``'s ``openai`` models (``LocalModel``), by
        deployment: kept while their args stay the same, started for new ones. An engine
        that cannot start is replaced by an ``UnavailableModel`` (its requests get a 503, the
        other models are served) rather than failing the configure, which on a new replica
        would keep the whole gateway from starting."""
        local: dict[str, LocalModel] = {}
        for model in config.models:
            if model.upstream is None:
                continue
            args = ModelArgs(
                spec_version=1,
                name=model.name,
                deployment=model.deployment,
                engine="openai",
                source={"base_url": model.upstream.base_url, "model": model.upstream.model},
                engine_args=model.upstream.engine_args,
                request_timeout_s=model.request_timeout_s,
                redis_url=self.args.redis_url,
                redis_prefix=self.args.redis_prefix,
            ).model_dump(mode="json")
            current = self.local.get(model.deployment)
            if current is not None and current.args == args:
                local[model.deployment] = current
                continue
            engine = LocalModel(args)
            try:
                await engine.start()
            except Exception as error:
                # This model answers 503 until a configure starts it; the others are served.
                logger.exception("model %s: its engine did not start", model.name)
                engine = UnavailableModel(args, _describe(error))
            local[model.deployment] = engine
        return local

    def _ensure_started(self) -> None:
        """Start the invalidation listener and the usage flusher on the replica's event loop."""
        if not self._started:
            self.access.start()
            self.usage.start()
            self.leases.start()
            self.settles.start()
            self._gauges = asyncio.get_running_loop().create_task(self._export_gauges())
            self._started = True

    async def _export_gauges(self) -> None:
        """Every few seconds, off the hot path: gauges read from components' own counters, and
        the buffered log lines written (so a quiet replica's access lines appear too)."""
        while True:
            metrics.USAGE_SPOOL_BACKLOG.set(self.usage.stats()["spool_backlog"])
            logs.flush()
            await asyncio.sleep(GAUGE_INTERVAL_S)

    # --- small helpers ---

    def _background_task(self, coro: Any) -> None:
        """Run ``coro`` to completion even if the request that started it is cancelled."""
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _read_body(self, request: Request) -> bytes:
        limit = self.config.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise _too_large(limit)
        body = bytearray()
        async for part in request.stream():
            body.extend(part)
            if len(body) > limit:
                raise _too_large(limit)
        return bytes(body)

    def _route(self, call: Call, principal: Principal, name: str, user: Any = None) -> RouteSpec:
        """404 for names the organisation may not use (no existence leak), 403 for names its
        key may not use, 404 for allowed names not deployed (yet). A weighted alias is served
        by the target ``splits`` chooses among those the organisation may use (by ``user``)."""
        if name not in principal.org_models:
            raise errors.model_not_found(name)
        if not principal.may_use(name):
            raise errors.forbidden(
                f"This API key may not use the model `{name}`.", "model_not_allowed", "model"
            )
        target = self.routes.get(name)
        if target is None:
            raise errors.model_not_found(name)
        call.reply_model = name
        weighted = self.weighted.get(name)
        if weighted is not None:
            target = weighted.choose(
                org_id=principal.org_id,
                user=user if isinstance(user, str) else None,
                usable=principal.org_models,
            )
            if target is None:
                raise errors.model_not_found(name)
            call.reply_model = target.name
        return target

    def _response_headers(self, call: Call) -> dict[str, str]:
        headers = call.reservation.headers() if call.reservation is not None else {}
        return {**headers, **call.cache.headers()} if call.cache is not None else headers

    def _error_response(self, call: Call, error: errors.ApiError) -> JSONResponse:
        call.status, call.error_type, call.error_code = error.status, error.type, error.code
        headers = {**self._response_headers(call), **error.headers}
        return JSONResponse(error.body(), status_code=error.status, headers=headers)

    # --- the request path ---

    async def handle(self, request: Request, endpoint: requests.Endpoint) -> Response:
        """Serve one chat, completions or embeddings request (see the module docstring)."""
        self._ensure_started()
        call = Call(
            request_id=_new_request_id(),
            endpoint=endpoint,
            http_request_id=request.headers.get("x-request-id"),
        )
        streaming = False
        try:
            call.principal = await self.access.authorize(request.headers.get("authorization"))
            parsed = requests.parse(requests.parse_json(await self._read_body(request)), endpoint)
            call.model, call.stream = parsed.model, parsed.stream
            call.target = self._route(call, call.principal, parsed.model, parsed.body.get("user"))
            call.prices = call.target.prices_for(call.principal.plan)
            call.cache = self.cache.plan(
                request.headers,
                org_id=call.principal.org_id,
                enabled=call.principal.response_cache,
                model=call.model,
                route=call.target,
                request=parsed,
            )
            if call.cache is not None and (hit := await self.cache.lookup(call.cache)):
                # A replay: reserved and settled like any request, at the cache-hit price.
                call.prices = call.cache.prices
                await self._reserve(call, parsed)
                hit.account(call)
                headers = self._response_headers(call)
                return hit.response_for(call.request_id, call.reply_model, parsed, headers)
            await self._reserve(call, parsed)
            plain, streamed = self.handles[call.target.deployment]
            metrics.child(metrics.IN_FLIGHT, call.model).inc()
            call.in_flight = True
            # Every wait on the model server is bounded by the model's request timeout.
            deadline = asyncio.get_running_loop().time() + call.target.request_timeout_s
            if parsed.stream:
                body = {
                    **parsed.body,
                    "stream_options": {
                        **(parsed.body.get("stream_options") or {}),
                        "include_usage": True,
                        "continuous_usage_stats": True,
                    },
                }
                generator = streamed.stream.remote(endpoint, body, call.principal.priority)
                # Wait for the first message before answering: an engine that refuses the
                # request then gets a real HTTP 400, not an error event inside a 200 stream.
                try:
                    async with asyncio.timeout_at(deadline):
                        first = await _first(generator)
                except TimeoutError:
                    generator.cancel()
                    raise self._timed_out(call) from None
                streaming = True
                return _StreamResponse(
                    self._stream(call, generator, first, parsed, deadline),
                    on_abandoned=lambda: self._abandoned(call, generator),
                    media_type="text/event-stream",
                    headers={**self._response_headers(call), "cache-control": "no-cache"},
                )
            response = plain.complete.remote(endpoint, parsed.body, call.principal.priority)
            try:
                async with asyncio.timeout_at(deadline):
                    result = await response
            except TimeoutError:
                # Cancels the request in the model server, which aborts it in the engine. The
                # answer never reached the client: the prompt (as reserved) is metered, no
                # completion tokens.
                response.cancel()
                call.prompt_tokens, call.usage_known = call.reserved_prompt, True
                raise self._timed_out(call) from None
            call.relayed_any = True
            self._take_usage(call, result.get("usage"))
            call.finish_reason = _finish_reason(result)
            result["model"] = call.reply_model
            if call.cache is not None:  # kept before the answer leaves: the next request hits
                call.cache.response = result
                await self.cache.store(call.cache, call, status=call.status)
            return JSONResponse(result, headers=self._response_headers(call))
        except errors.ApiError as error:
            return self._error_response(call, error)
        except LimiterUnavailable as error:
            logger.error("request %s: the limiter's Redis failed: %s", call.request_id, error)
            return self._error_response(
                call, errors.unavailable("Rate limiting is temporarily unavailable; retry.")
            )
        except BackPressureError:
            model = call.model if call.target is not None else "-"
            metrics.QUEUE_REJECTIONS.labels(model).inc()
            return self._error_response(call, _overloaded(call.model))
        except _MODEL_UNAVAILABLE as error:
            logger.warning("request %s: model server unavailable: %s", call.request_id, error)
            return self._error_response(
                call,
                errors.ApiError(
                    503,
                    f"The model `{call.model}` is not available right now; retry shortly.",
                    "server_error",
                    None,
                    "model_unavailable",
                    {"Retry-After": str(MODEL_UNAVAILABLE_RETRY_S)},
                ),
            )
        except asyncio.CancelledError:
            call.status, call.error_type = 499, "client_disconnected"
            raise
        except Exception as error:
            # A bug, or a failure no branch above maps: the line names the exception's class
            # and the request's two ids, so the traceback below it can be found and read.
            logger.exception(
                "request %s failed: %s (http_request_id=%s)",
                call.request_id,
                _describe(error),
                call.http_request_id,
            )
            return self._error_response(
                call,
                errors.ApiError(
                    500,
                    "The server had an error while processing your request.",
                    "server_error",
                    None,
                    "internal_error",
                ),
            )
        finally:
            if not streaming:
                # Off the response's path, and immune to this task being cancelled.
                self._background_task(self._finish(call))

    def _timed_out(self, call: Call) -> errors.ApiError:
        """504 for a request past its model's timeout. The timeout bounds the wait for a cold
        start too (a model scaled to zero queues the request in the handle while Serve starts a
        replica): a request that got no answer at all may have waited for one that did not
        finish in time, so it says so and carries ``Retry-After`` (the replica keeps starting)."""
        assert call.target is not None
        metrics.TIMEOUTS.labels(call.model).inc()
        if not call.relayed_any:
            return errors.ApiError(
                504,
                f"The model `{call.model}` gave no answer within its timeout "
                f"({call.target.request_timeout_s:g} s), which includes starting a replica when "
                f"the model is scaled to zero; the request was cancelled. Retry after "
                f"{COLD_START_RETRY_S} s.",
                "server_error",
                None,
                "timeout",
                {"Retry-After": str(COLD_START_RETRY_S)},
            )
        return errors.ApiError(
            504,
            f"The request did not finish within the model's timeout "
            f"({call.target.request_timeout_s:g} s); it was cancelled.",
            "server_error",
            None,
            "timeout",
        )

    async def _reserve(self, call: Call, parsed: requests.ParsedRequest) -> None:
        assert call.principal is not None
        assert call.target is not None
        prompt, completion = requests.reserved_tokens(
            parsed, context_length=call.target.context_length
        )
        assert call.prices is not None
        spend = call.prices.cost(prompt, completion)
        decision = await self.limiter.reserve(
            key_id=call.principal.key_id,
            org_id=call.principal.org_id,
            key_limits=call.principal.key_limits,
            org_limits=call.principal.org_limits,
            tokens=prompt + completion,
            spend=spend,
            request_id=call.request_id,
            prepaid=call.principal.prepaid,
        )
        if isinstance(decision, Refusal):
            raise _rate_limited(decision)
        call.reservation = decision
        self.leases.add(decision)
        call.reserved_prompt, call.reserved_completion = prompt, completion

    async def _stream(
        self,
        call: Call,
        generator: Any,
        first: list[dict[str, Any]],
        parsed: requests.ParsedRequest,
        deadline: float,
    ) -> AsyncIterator[bytes]:
        call.relaying = True
        finished = False
        try:
            batch: list[dict[str, Any]] | None = first
            while batch is not None:
                out = self._relay(call, batch, parsed)
                if out:
                    yield out
                try:
                    async with asyncio.timeout_at(deadline):
                        batch = await _next(generator)
                except TimeoutError:
                    # Cancel the engine's work; what it produced so far is metered from its
                    # own running counts (continuous usage stats).
                    generator.cancel()
                    raise self._timed_out(call) from None
            if parsed.include_usage:
                yield sse(
                    usage_chunk(
                        request_id=call.request_id,
                        model=call.reply_model,
                        endpoint=parsed.endpoint,
                        prompt_tokens=call.prompt_tokens,
                        completion_tokens=call.completion_tokens,
                        cached_tokens=call.cached_tokens,
                    )
                )
            if call.cache is not None:  # a complete stream is kept before its end is sent
                await self.cache.store(call.cache, call, status=call.status)
            yield b"data: [DONE]\n\n"
            finished = True
        except errors.ApiError as error:
            call.status, call.error_type, call.error_code = error.status, error.type, error.code
            yield sse(error.body())
            finished = True
        except Exception as error:
            logger.exception(
                "stream %s failed: %s (http_request_id=%s)",
                call.request_id,
                _describe(error),
                call.http_request_id,
            )
            call.status, call.error_type, call.error_code = 500, "server_error", "internal_error"
            yield sse(
                errors.ApiError(
                    500, "The server had an error while streaming.", "server_error"
                ).body()
            )
            finished = True
        finally:
            if not finished:
                # The client went away: cancel the engine's work and meter what it produced.
                generator.cancel()
                call.status, call.error_type, call.error_code = 499, "client_disconnected", None
            # Settle outside this (possibly cancelled) task so it always completes.
            self._background_task(self._finish(call))

    def _abandoned(self, call: Call, generator: Any) -> None:
        """The response ended without its body ever starting (the client left right after the
        headers): ``_stream``'s own clean-up never ran, so cancel and settle here."""
        if call.relaying:
            return
        generator.cancel()
        call.status, call.error_type = 499, "client_disconnected"
        self._background_task(self._finish(call))

    async def __del__(self) -> None:
        """Ray Serve calls this on a graceful stop (an apply, a downscale): settle what is in
        flight and send or spool every usage event still in memory before the process exits."""
        if self._gauges is not None:
            self._gauges.cancel()
        for task in list(self._rehandling.values()):
            task.cancel()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        for task, model in list(self._retiring.items()):
            task.cancel()
            await model.aclose()
        for model in self.local.values():
            await model.aclose()
        await self.leases.aclose()
        await self.settles.aclose()
        await self.usage.aclose()
        await self.access.aclose()
        await self.redis.aclose()

    def _relay(
        self, call: Call, batch: list[dict[str, Any]], parsed: requests.ParsedRequest
    ) -> bytes:
        """One Ray message of chunks -> SSE bytes for the client; usage is taken, not sent."""
        out: list[str] = []
        for chunk in batch:
            self._take_usage(call, chunk.get("usage"))
            if not chunk.get("choices"):
                continue  # the engine's usage chunk: re-emitted at the end if asked
            call.chunks_relayed += 1
            call.relayed_any = True
            if call.ttft is None:
                call.ttft = time.perf_counter() - call.started
            call.finish_reason = _finish_reason(chunk) or call.finish_reason
            chunk.pop("usage", None)
            chunk["model"] = call.reply_model
            if call.cache is not None:
                call.cache.capture(chunk)
            out.append(f"data: {json.dumps(chunk, separators=(',', ':'))}\n\n")
        return "".join(out).encode()

    def _take_usage(self, call: Call, usage: dict[str, Any] | None) -> None:
        if not usage:
            return
        call.prompt_tokens = int(usage.get("prompt_tokens") or 0)
        call.completion_tokens = int(usage.get("completion_tokens") or 0)
        details = usage.get("prompt_tokens_details") or {}
        call.cached_tokens = int(details.get("cached_tokens") or 0)
        call.usage_known = True

    async def _finish(self, call: Call) -> None:
        """Emit the usage event, record metrics, settle the reservation. Once per request.

        The event goes first (into the emitter's buffer, no I/O), so nothing later in here can
        lose it. When the engine reported no usage for a request it served (an upstream without
        usage in its stream, a stream cut before its usage chunk), the request is metered
        conservatively: the reserved prompt estimate, and at least one token per chunk relayed
        (or the whole reservation for a complete answer) — never zero.
        """
        if call.settled:
            return
        call.settled = True
        latency = time.perf_counter() - call.started
        if call.in_flight:
            metrics.child(metrics.IN_FLIGHT, call.model).dec()
        if call.reservation is not None and not call.usage_known and call.relayed_any:
            logger.warning(
                "request %s: engine reported no usage; metered as reserved", call.request_id
            )
            call.prompt_tokens = call.reserved_prompt
            call.completion_tokens = (
                call.reserved_completion if call.status == 200 else call.chunks_relayed
            )
        # One number for the bill (the event) and the budget (the settle): the price this replica
        # served the request at, the organisation's plan price (``call.prices``, as reserved).
        prices = call.prices
        spend = (
            prices.cost(call.prompt_tokens, call.completion_tokens)
            if prices is not None
            else Decimal(0)
        )
        self._emit(call, latency, spend)
        self._record_metrics(call, latency)
        if call.reservation is not None:
            try:
                # Now, or journalled and retried if Redis fails: never dropped.
                await self.settles.settle(
                    call.reservation,
                    prompt_tokens=call.prompt_tokens,
                    completion_tokens=call.completion_tokens,
                    spend=spend,
                )
            except Exception:
                logger.exception("request %s: settling failed", call.request_id)
            finally:
                self.leases.discard(call.reservation)

    def _record_metrics(self, call: Call, latency: float) -> None:
        # Only names that routed become label values: a client cannot mint series.
        model = call.model if call.target is not None else "-"
        principal = call.principal
        org = principal.org_slug if principal else "-"
        metrics.request_finished(
            model=model,
            endpoint=call.endpoint,
            status=call.status,
            org=org,
            prompt_tokens=call.prompt_tokens,
            completion_tokens=call.completion_tokens,
        )
        if call.status != 200:
            metrics.ERRORS.labels(model, call.error_type or "-", call.error_code or "-").inc()
        if call.target is not None and call.model in self.weighted:
            metrics.ALIAS_REQUESTS.labels(call.model, call.target.name, str(call.status)).inc()
        metrics.child(metrics.LATENCY, model, call.endpoint).observe(latency)
        if call.ttft is not None:
            metrics.child(metrics.TTFT, model).observe(call.ttft)
        if call.status == 200 and not ACCESS_LOG:
            return  # the usage event records the same, and Serve's own access line is written
        # The access line (lazy: formatted only when INFO is on).
        logger.info(
            "request %s org=%s key=%s model=%s endpoint=%s stream=%s status=%d "
            "tokens=%d+%d latency_ms=%.1f http_request_id=%s",
            call.request_id,
            org,
            principal.key_id if principal else "-",
            model,
            call.endpoint,
            call.stream,
            call.status,
            call.prompt_tokens,
            call.completion_tokens,
            latency * 1000,
            call.http_request_id,
        )

    def _emit(self, call: Call, latency: float, spend: Decimal) -> None:
        if call.principal is None:
            return  # usage events are for requests that passed authentication
        target = call.target
        self.usage.emit(
            UsageEvent(
                request_id=call.request_id,
                org_id=call.principal.org_id,
                key_id=call.principal.key_id,
                model=call.model,
                served_model=target.name if target else "",
                endpoint=call.endpoint,
                stream=call.stream,
                status=call.status,
                error_type=call.error_type,
                finish_reason=call.finish_reason,
                prompt_tokens=call.prompt_tokens,
                completion_tokens=call.completion_tokens,
                cached_tokens=call.cached_tokens,
                cost=spend,
                price_input_per_mtok=call.prices.input_per_mtok if call.prices else None,
                price_output_per_mtok=call.prices.output_per_mtok if call.prices else None,
                cache=call.cache.result if call.cache is not None else None,
                latency_ms=latency * 1000,
                ttft_ms=call.ttft * 1000 if call.ttft is not None else None,
                started_at=call.started_at,
                http_request_id=call.http_request_id,
            )
        )

    # --- models ---

    async def list_models(self, request: Request) -> Response:
        self._ensure_started()
        try:
            principal = await self.access.authorize(request.headers.get("authorization"))
        except errors.ApiError as error:
            return JSONResponse(error.body(), error.status)
        described = (self._model_entry(name, principal) for name in principal.usable())
        data = [model for model in described if model is not None]
        return JSONResponse({"object": "list", "data": data})

    async def get_model(self, request: Request, model: str) -> Response:
        self._ensure_started()
        try:
            principal = await self.access.authorize(request.headers.get("authorization"))
            described = self._model_entry(model, principal) if principal.may_use(model) else None
            if described is None:
                raise errors.model_not_found(model)
        except errors.ApiError as error:
            return JSONResponse(error.body(), error.status)
        return JSONResponse(described)

    def _model_entry(self, name: str, principal: Principal) -> dict[str, Any] | None:
        """The model object of a name the principal may use, or ``None`` when nothing would
        serve it (not deployed, or a weighted alias none of whose live targets its organisation
        may use: a request would be a 404). A weighted alias is described by the targets that
        can serve this organisation only, with the smallest of their context lengths: a prompt
        that fits it fits whichever target the split picks."""
        route = self.routes.get(name)
        if route is None:
            return None
        weighted = self.weighted.get(name)
        if weighted is None:
            return _model_object(name, route.context_length)
        targets, _ = weighted.usable_targets(principal.org_models)
        if not targets:
            return None
        return _model_object(name, min(target.context_length for target in targets))

    async def health(self) -> Response:
        try:
            await self.redis.ping()
            redis_ok = True
        except Exception:
            redis_ok = False
        body = {
            "status": "ok" if redis_ok else "degraded",
            "revision": self.config.revision,
            "redis": redis_ok,
            "snapshot_subscribed": self.access.subscribed,
            "usage": self.usage.stats(),
        }
        return JSONResponse(body, status_code=200 if redis_ok else 503)


class _StreamResponse(StreamingResponse):
    """A streaming response that says when it ended without its body generator starting."""

    def __init__(self, content: AsyncIterator[bytes], *, on_abandoned: Any, **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self.on_abandoned = on_abandoned

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_abandoned()


async def _first(generator: Any) -> list[dict[str, Any]]:
    batch = await _next(generator)
    return batch if batch is not None else []


async def _next(generator: Any) -> list[dict[str, Any]] | None:
    """The next message of a model server's stream, or ``None`` at its end."""
    try:
        batch: list[dict[str, Any]] = await generator.__anext__()
    except StopAsyncIteration:
        return None
    return batch


async def _close_later(model: LocalModel, after_s: float) -> None:
    """Close a retired in-process engine once the requests that use it are done."""
    await asyncio.sleep(after_s)
    await model.aclose()


def _describe(error: BaseException) -> str:
    """An exception as ``module.Class: message``, for a log line (the message cut short)."""
    kind = type(error)
    text = str(error).replace("\n", " ")
    if len(text) > 300:
        text = text[:300] + "…"
    return f"{kind.__module__}.{kind.__qualname__}: {text}"


def _too_large(limit: int) -> errors.ApiError:
    return errors.ApiError(
        413,
        f"The request body is larger than {limit} bytes.",
        "invalid_request_error",
        None,
        "request_too_large",
    )


def _new_request_id() -> str:
    # 128 random bits as 32 hex digits, as ``uuid4().hex`` gives, without building a UUID.
    return "req_" + os.urandom(16).hex()


def _finish_reason(result: dict[str, Any]) -> str | None:
    for choice in result.get("choices") or []:
        if choice.get("finish_reason"):
            return str(choice["finish_reason"])
    return None


def _model_object(name: str, context_length: int) -> dict[str, Any]:
    return {
        "id": name,
        "object": "model",
        "created": 0,
        "owned_by": "vlinders",
        "context_length": context_length,
    }


def _rate_limited(refusal: Refusal) -> errors.ApiError:
    """429 for a refusal: ``insufficient_quota`` for budgets and an exhausted prepaid balance,
    ``rate_limit_exceeded`` otherwise, with ``Retry-After`` when waiting can help (not when the
    request alone exceeds the limit, nor for the balance: a top-up helps, waiting does not).
    A prepaid balance the limiter does not hold is the platform's fault: 503."""
    if refusal.limit == "org.prepaid_balance":
        return errors.ApiError(
            429,
            "You exceeded your current quota, please check your plan and billing details.",
            "insufficient_quota",
            None,
            "insufficient_quota",
            refusal.headers(),
        )
    if refusal.limit == "org.balance_unavailable":
        error = errors.unavailable(
            "The credit balance is temporarily unavailable; retry shortly.", "balance_unavailable"
        )
        error.headers = {**refusal.headers(), **error.headers}
        return error
    budget = "budget" in refusal.limit
    what = refusal.limit.replace(".", " ").replace("_", " ")
    headers = refusal.headers()
    if refusal.retry_after is None:
        message = f"This request alone exceeds the {what}; lower max_tokens or the prompt."
    elif budget:
        message = f"You exceeded your {what}. Raise the budget or wait for the next month."
    else:
        message = f"You exceeded your {what}. Retry after {_seconds(refusal.retry_after)} s."
    if refusal.retry_after is not None:
        headers["Retry-After"] = str(_seconds(refusal.retry_after))
    code = "insufficient_quota" if budget else "rate_limit_exceeded"
    return errors.ApiError(429, message, code, None, code, headers)


# What a client refused for a full queue is asked to wait: queues drain in about this long.
OVERLOADED_RETRY_S = 1


def _overloaded(model: str) -> errors.ApiError:
    """503 for a model whose queue (``max_queued_requests``) is full: refused at once, so the
    client can back off or go elsewhere instead of waiting minutes in a queue."""
    return errors.ApiError(
        503,
        f"The model `{model}` is at capacity; retry after {OVERLOADED_RETRY_S} s.",
        "server_error",
        None,
        "model_overloaded",
        {"Retry-After": str(OVERLOADED_RETRY_S)},
    )


def _seconds(value: float) -> int:
    return max(1, math.ceil(value))
