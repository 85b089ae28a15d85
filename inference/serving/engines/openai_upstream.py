"""The ``openai`` engine: forwards to an OpenAI-compatible server someone already runs (a vLLM,
TGI or SGLang deployment, or another provider), streaming included.

The upstream's own errors come back with their status and message in OpenAI's shape; an
unreachable or failing upstream is a 503 (retryable) or 502. Streams ask the upstream for usage
(``stream_options.include_usage``) so the gateway meters the upstream's own counts.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from inference.serving import errors
from inference.serving.engines.base import Endpoint

_PATHS = {
    "chat.completions": "/chat/completions",
    "completions": "/completions",
    "embeddings": "/embeddings",
}


class OpenAIUpstreamEngine:
    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        api_key: str = "",
        timeout_s: float = 600.0,
        max_connections: int = 256,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key = api_key
        self.timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=10)
        self.max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        self._session = aiohttp.ClientSession(
            headers=headers,
            timeout=self.timeout,
            connector=aiohttp.TCPConnector(limit=self.max_connections),
        )

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
                self.base_url + _PATHS[endpoint], json=self._body(body, stream=False)
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
                self.base_url + _PATHS[endpoint], json=self._body(body, stream=True)
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
