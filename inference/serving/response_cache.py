"""The response cache: exact-match replay of whole responses (``docs/response-cache.md``).

A request is answered from the cache only when all of these hold, so a cached answer is one the
model would have given again:

- the organisation opted in (``Principal.response_cache``, from the access snapshot);
- the request asked for it: header ``x-vlinders-cache: use`` (the openai SDK sends it with
  ``extra_headers={"x-vlinders-cache": "use"}``);
- the model caches (``RouteSpec.cache_ttl_s`` > 0) and has a revision (``model_revision``);
- the request is deterministic (:func:`ineligible`): embeddings always; chat and completions with
  ``n`` 1 and either ``temperature`` 0 or an integer ``seed``.

The key (:func:`entry_key`) is the organisation, the model's deployment and revision, the endpoint,
whether it streams, and a SHA-256 of the request's canonical JSON without the keys that do not
change the answer (:data:`IGNORED_KEYS`). So an entry never crosses organisations, and a model whose
engine, source or engine arguments changed (a new revision) never serves an older answer. Streamed
and plain requests do not share entries: a stream is replayed chunk for chunk as it was relayed.

Hits are metered like any request: the gateway reserves and settles them through the limiter (every
rate limit and budget applies) at the model's hit price (:func:`hit_prices`, input and output
tokens alike), and their usage event says ``"cache": "hit"``. The cache never fails a request: a
Redis error on a lookup is a miss, on a store a lost entry (both logged and counted).

This module is part of the data plane: it never imports Django.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import redis.asyncio as aioredis
from fastapi.responses import JSONResponse, Response, StreamingResponse
from redis.exceptions import RedisError

from inference.serving import metrics
from inference.serving.pricing import Prices
from inference.serving.requests import ParsedRequest as Request
from inference.serving.spec import RouteSpec as Route
from inference.serving.sse import sse, usage_chunk

logger = logging.getLogger(__name__)

HEADER = "x-vlinders-cache"
# The request header's value that asks for the cache.
USE = "use"
ENTRY_VERSION = 1
# Keys of a request body that never change the answer: how it is delivered (stream, its options),
# who asked (user, metadata), storage and tiering flags, the scheduling priority the gateway drops,
# and the model's public name (the key holds the served deployment and its revision instead, so an
# alias and its model share entries).
IGNORED_KEYS = frozenset(
    {"model", "stream", "stream_options", "user", "metadata", "store", "service_tier", "priority"}
)
# An entry larger than this (its JSON) is not stored: a cache is for many small answers, and one
# huge embeddings batch must not evict them.
MAX_ENTRY_BYTES = 1024 * 1024
# A stream of more chunks than this is not captured (bounds the memory a miss holds).
MAX_CAPTURED_CHUNKS = 8192

Result = Literal["hit", "miss"]


class Metered(Protocol):
    """What a hit fills in on the gateway's ``Call`` (its usage, as the engine reported it)."""

    started: float
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    usage_known: bool
    relayed_any: bool
    finish_reason: str | None
    ttft: float | None


def requested(headers: Mapping[str, str]) -> bool:
    """Whether the request asked for the cache (``x-vlinders-cache: use``, any case)."""
    return headers.get(HEADER, "").strip().lower() == USE


def ineligible(request: Request) -> str | None:
    """Why a request cannot be cached (``None`` when it can): only deterministic requests are.

    Embeddings are a function of their input. Chat and completions are deterministic with greedy
    sampling (``temperature`` 0) or a fixed ``seed``; ``n`` must be 1 (one answer to replay).
    Everything else in the body (tools, response_format, logprobs, stop, max_tokens…) is part of
    the key, so it never makes a request ineligible: tool calls are text the model returns, and a
    replay returns the same text; running the tools is the client's business."""
    if request.endpoint == "embeddings":
        return None
    if request.n != 1:
        return "n"
    body = request.body
    temperature = body.get("temperature")
    if temperature is not None and not isinstance(temperature, bool) and temperature == 0:
        return None
    seed = body.get("seed")
    if isinstance(seed, int) and not isinstance(seed, bool):
        return None
    return "not_deterministic"


def normalised(body: Mapping[str, Any]) -> str:
    """The request's canonical JSON: keys sorted, no whitespace, :data:`IGNORED_KEYS` left out,
    and defaults that are spelt out dropped (``n`` 1), so requests that mean the same share it."""
    kept = {k: v for k, v in body.items() if k not in IGNORED_KEYS}
    if kept.get("n") == 1:
        del kept["n"]
    return json.dumps(kept, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def entry_key(prefix: str, org_id: str, route: Route, request: Request) -> str:
    """The Redis key of a request's entry (``docs/response-cache.md``): the organisation and the
    model's revision in clear, so an operator can drop one organisation's or one model's entries
    with ``SCAN``, and the request as a hash."""
    digest = hashlib.sha256(normalised(request.body).encode()).hexdigest()
    mode = "stream" if request.stream else "plain"
    return (
        f"{prefix}rcache:v{ENTRY_VERSION}:{org_id}:{route.deployment}:{route.model_revision}:"
        f"{request.endpoint}:{mode}:{digest}"
    )


def hit_prices(route: Route) -> Prices:
    """What a hit is charged: the model's cache-hit price, for input and output tokens alike."""
    price = route.price_cache_hit_per_mtok
    return Prices(price, price)


@dataclass
class CacheState:
    """The cache's part of one request: its key, what the lookup found, what a miss captured."""

    key: str
    ttl_s: int
    endpoint: str
    model: str  # the public name asked for (a label value: only names that routed)
    stream: bool
    prices: Prices  # what a hit is charged
    result: Result = "miss"
    response: dict[str, Any] | None = None  # a plain miss's answer, as sent
    chunks: list[dict[str, Any]] = field(default_factory=list)  # a stream miss's chunks, as sent
    overflow: bool = False
    stored: bool = False

    def capture(self, chunk: dict[str, Any]) -> None:
        """Keep a chunk a stream relayed (the stream is stored when it completes)."""
        if len(self.chunks) >= MAX_CAPTURED_CHUNKS:
            self.overflow = True
            self.chunks.clear()
        elif not self.overflow:
            self.chunks.append(chunk)

    def headers(self) -> dict[str, str]:
        return {HEADER: self.result}


@dataclass(frozen=True)
class Entry:
    """A stored answer and the usage the engine reported for it."""

    stream: bool
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    finish_reason: str | None
    response: dict[str, Any] | None
    chunks: list[dict[str, Any]]

    def account(self, call: Metered) -> None:
        """Fill in the gateway's call as if the engine had answered: its usage is the stored
        one (metered at the hit price by the caller)."""
        call.prompt_tokens = self.prompt_tokens
        call.completion_tokens = self.completion_tokens
        call.cached_tokens = self.cached_tokens
        call.usage_known = True
        call.relayed_any = True
        call.finish_reason = self.finish_reason
        if self.stream:
            call.ttft = time.perf_counter() - call.started

    def response_for(
        self, request_id: str, model: str, request: Request, headers: dict[str, str]
    ) -> Response:
        """The replay: the stored answer with ``model`` the name asked for; a stream as SSE, its
        chunks as relayed, the usage chunk if the request asked for it, then ``[DONE]``."""
        if not self.stream:
            body = dict(self.response or {})
            body["model"] = model
            return JSONResponse(body, headers=headers)
        return StreamingResponse(
            self._replay(request_id, model, request),
            media_type="text/event-stream",
            headers={**headers, "cache-control": "no-cache"},
        )

    async def _replay(self, request_id: str, model: str, request: Request) -> AsyncIterator[bytes]:
        parts = [sse({**chunk, "model": model}) for chunk in self.chunks]
        if request.include_usage:
            parts.append(
                sse(
                    usage_chunk(
                        request_id=request_id,
                        model=model,
                        endpoint=request.endpoint,
                        prompt_tokens=self.prompt_tokens,
                        completion_tokens=self.completion_tokens,
                        cached_tokens=self.cached_tokens,
                    )
                )
            )
        parts.append(b"data: [DONE]\n\n")
        yield b"".join(parts)

    def to_json(self) -> str:
        return json.dumps(
            {
                "v": ENTRY_VERSION,
                "stream": self.stream,
                "usage": [self.prompt_tokens, self.completion_tokens, self.cached_tokens],
                "finish_reason": self.finish_reason,
                "response": self.response,
                "chunks": self.chunks,
            },
            separators=(",", ":"),
            ensure_ascii=False,
        )

    @classmethod
    def from_json(cls, raw: bytes | str) -> Entry | None:
        """An entry, or ``None`` for one this version cannot read (then it is a miss)."""
        try:
            data = json.loads(raw)
            if data.get("v") != ENTRY_VERSION:
                return None
            prompt, completion, cached = (int(n) for n in data["usage"])
            return cls(
                stream=bool(data["stream"]),
                prompt_tokens=prompt,
                completion_tokens=completion,
                cached_tokens=cached,
                finish_reason=data.get("finish_reason"),
                response=data.get("response"),
                chunks=list(data.get("chunks") or []),
            )
        except (ValueError, TypeError, KeyError, AttributeError):
            return None


class ResponseCache:
    """Lookups and stores of one gateway replica, on the replica's Redis client."""

    def __init__(self, client: aioredis.Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix

    def plan(
        self,
        headers: Mapping[str, str],
        *,
        org_id: str,
        enabled: bool,
        model: str,
        route: Route,
        request: Request,
    ) -> CacheState | None:
        """The cache's state for a request it applies to, ``None`` for any other (the module
        docstring lists the conditions)."""
        if not (enabled and route.cache_ttl_s > 0 and route.model_revision and requested(headers)):
            return None
        if ineligible(request) is not None:
            metrics.RESPONSE_CACHE.labels(model, "ineligible").inc()
            return None
        return CacheState(
            key=entry_key(self.prefix, org_id, route, request),
            ttl_s=route.cache_ttl_s,
            endpoint=request.endpoint,
            model=model,
            stream=request.stream,
            prices=hit_prices(route),
        )

    async def lookup(self, state: CacheState) -> Entry | None:
        """The stored entry (``state.result`` becomes ``hit``), or ``None`` (a miss)."""
        try:
            raw = await self.client.get(state.key)
        except (RedisError, OSError) as error:
            logger.warning("response cache: lookup failed (%s); treated as a miss", error)
            metrics.RESPONSE_CACHE.labels(state.model, "error").inc()
            raw = None
        entry = Entry.from_json(raw) if raw is not None else None
        if entry is not None and entry.stream != state.stream:
            entry = None  # never: the key holds the mode; a guard against a key clash
        state.result = "hit" if entry is not None else "miss"
        metrics.RESPONSE_CACHE.labels(state.model, state.result).inc()
        return entry

    async def store(self, state: CacheState, call: Metered, *, status: int) -> bool:
        """Store a miss's answer if it is complete: status 200, usage reported by the engine, a
        finish reason, and (a stream) every chunk captured. The gateway calls it before the
        answer's last bytes leave (the JSON body; a stream's ``[DONE]``), so a request sent after
        a miss's response completed finds the entry. Once; never raises; ``True`` if stored."""
        if state.stored or state.result != "miss" or status != 200 or not call.usage_known:
            return False
        if state.overflow or (call.finish_reason is None and state.endpoint != "embeddings"):
            return False  # cut short (embeddings have no finish reason)
        if (state.stream and not state.chunks) or (not state.stream and state.response is None):
            return False
        entry = Entry(
            stream=state.stream,
            prompt_tokens=call.prompt_tokens,
            completion_tokens=call.completion_tokens,
            cached_tokens=call.cached_tokens,
            finish_reason=call.finish_reason,
            response=state.response,
            chunks=state.chunks,
        )
        try:
            text = entry.to_json()
            if len(text.encode()) > MAX_ENTRY_BYTES:
                metrics.RESPONSE_CACHE.labels(state.model, "too_large").inc()
                return False
            await self.client.set(state.key, text, ex=state.ttl_s)
        except (RedisError, OSError, TypeError, ValueError) as error:
            logger.warning("response cache: store failed (%s)", error)
            metrics.RESPONSE_CACHE.labels(state.model, "error").inc()
            return False
        state.stored = True
        metrics.RESPONSE_CACHE.labels(state.model, "stored").inc()
        return True
