"""The ``openai`` engine: forwards to an OpenAI-compatible server someone already runs (a vLLM,
TGI or SGLang deployment, or another provider), streaming included.

The upstream's own errors come back with their status and message in OpenAI's shape; an
unreachable or failing upstream is a 503 (retryable) or 502. Streams ask the upstream for usage
(``stream_options.include_usage``) so the gateway meters the upstream's own counts.

The API key comes from ``credentials`` (``inference/serving/credentials.py``: read from Redis,
where the control plane publishes it encrypted), per request, so a rotated key is used within
seconds without a restart; an upstream 401 drops the cached key so the next request re-reads it.
Every request is bounded by ``timeout_s`` (the model's request timeout, by default), connecting
by 10 s.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any, Protocol

import aiohttp

from inference.serving import errors
from inference.serving.engines.base import Endpoint

_PATHS = {
    "chat.completions": "/chat/completions",
    "completions": "/completions",
    "embeddings": "/embeddings",
}


class Credentials(Protocol):
    async def api_key(self) -> str: ...

    def invalidate(self) -> None: ...


class StaticCredentials:
    """A fixed key (or none): for upstreams that need no key, and for tests."""

    def __init__(self, key: str = "") -> None:
        self.key = key

    async def api_key(self) -> str:
        return self.key

    def invalidate(self) -> None:
        return None


class OpenAIUpstreamEngine:
    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        credentials: Credentials | None = None,
        timeout_s: float = 300.0,
        max_connections: int = 256,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.credentials: Credentials = credentials or StaticCredentials()
        self.timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=10)
        self.max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            timeout=self.timeout,
            connector=aiohttp.TCPConnector(limit=self.max_connections),
        )

    async def _headers(self) -> dict[str, str]:
        try:
            key = await self.credentials.api_key()
        except Exception as error:
            raise errors.unavailable(
                "The upstream model server's credentials cannot be read; retry.",
                "upstream_credentials_unavailable",
            ) from error
        return {"Authorization": f"Bearer {key}"} if key else {}

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("engine not started")
        return self._session

    async def check_health(self) -> None:
        return None  # an upstream outage is a per-request 503, not a reason to kill the replica

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()

    def _body(self, body: dict[str, Any], *, stream: bool) -> dict[str, Any]:
        """The body for the upstream: its model name, and for streams only the standard
        ``include_usage`` option (strict OpenAI-compatible servers refuse vLLM's
        ``continuous_usage_stats``, which the gateway adds for engines that count)."""
        out = dict(body, model=self.model)
        if stream:
            out["stream_options"] = {"include_usage": True}
        return out

    async def _raise_for(self, response: aiohttp.ClientResponse) -> None:
        if response.status < 400:
            return
        text = await response.text()
        if response.status == 401:
            self.credentials.invalidate()  # perhaps rotated: the next request re-reads it
        try:
            error = json.loads(text).get("error") or {}
            message = error.get("message") or text
        except (ValueError, AttributeError):
            error, message = {}, text
        if response.status >= 500 or response.status in (401, 403, 404):
            # A 5xx, or our own credentials or model name refused upstream: the platform's
            # fault, never the tenant's (their key is not the one the upstream refused).
            raise errors.ApiError(
                502,
                f"The upstream model server refused or failed the request ({response.status}).",
                "server_error",
                None,
                "upstream_error",
            )
        if response.status == 429:
            raise errors.unavailable(
                "The upstream model server is at capacity; retry.", "upstream_busy"
            )
        raise errors.ApiError(
            response.status,
            str(message),
            str(error.get("type") or "invalid_request_error"),
            error.get("param"),
            error.get("code"),
        )

    async def complete(
        self, endpoint: Endpoint, body: dict[str, Any], *, priority: int = 0
    ) -> dict[str, Any]:
        try:
            async with self.session.post(
                self.base_url + _PATHS[endpoint],
                json=self._body(body, stream=False),
                headers=await self._headers(),
            ) as response:
                await self._raise_for(response)
                result: dict[str, Any] = await response.json()
                return result
        except (aiohttp.ClientConnectionError, TimeoutError) as error:
            raise errors.unavailable(
                f"The upstream model server is unreachable: {error}", "upstream_unavailable"
            ) from error

    async def stream(
        self, endpoint: Endpoint, body: dict[str, Any], *, priority: int = 0
    ) -> AsyncIterator[dict[str, Any]]:
        try:
            async with self.session.post(
                self.base_url + _PATHS[endpoint],
                json=self._body(body, stream=True),
                headers=await self._headers(),
            ) as response:
                await self._raise_for(response)
                async for raw in response.content:
                    line = raw.decode().strip()
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        return
                    chunk = json.loads(data)
                    if "error" in chunk:
                        error = chunk["error"]
                        raise errors.ApiError(
                            502, str(error.get("message")), "server_error", None, "upstream_error"
                        )
                    yield chunk
        except (aiohttp.ClientConnectionError, TimeoutError) as error:
            raise errors.unavailable(
                f"The upstream model server is unreachable: {error}", "upstream_unavailable"
            ) from error
