"""The playground's relay to the gateway: one chat request, sent from the server with the
member's console credential, and the gateway's answer turned into the console's.

Contract:

* Input: a ``GatewayCall``, prepared by the page (``console.pages.playground``) after scoping:
  the model, the request body for ``/v1/chat/completions``, the credential's secret and key id.
  Nothing here touches the ORM; the only other store is Redis, to forget a credential the
  gateway refused (401), so the next message gets a renewed one.
* ``open_stream``: the streamed reply. A 200 becomes a ``StreamingHttpResponse`` of the gateway's
  server-sent events, relayed as they arrive; before ``data: [DONE]`` (or at the end of a stream
  cut short after its usage chunk) it adds one event of its own, ``event: vlinders.cost``
  (``cost_event``): the reply's tokens and its cost, computed in Decimal from the usage chunk and
  the catalog's prices with the gateway's own formula (``reply_cost``, which the page uses for a
  reply without streaming too). A stream that breaks off or ends without ``[DONE]`` ends with an
  OpenAI-shaped error event.
* A gateway that refuses (401, 403, 404, 429, 503, …) is answered with its status and its
  OpenAI-shaped error (``Retry-After`` and ``x-request-id`` kept; at most ``MAX_ERROR_BYTES`` of
  it read); one that cannot be reached is a 502 ``gateway_unreachable``.
* ``complete``: the same exchange without streaming, as a ``Reply`` (the content and usage, or the
  status and the gateway's message); never raises for the gateway's faults.
* Timeouts (``_timeout``): connect in 5 s, read as long as a model may run
  (``VLINDERS_CONSOLE_GATEWAY_READ_TIMEOUT_S``, 330 s by default). httpx ignores proxy settings
  from the environment (``trust_env=False``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import httpx
import redis
from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import HttpResponseBase, JsonResponse, StreamingHttpResponse

from inference.serving.pricing import cost
from tenants.catalog import AvailableModel
from tenants.console_credentials import console_credential_forget

logger = logging.getLogger(__name__)

GATEWAY_PATH = "/v1/chat/completions"
# The most of an error body read from the gateway.
MAX_ERROR_BYTES = 64 * 1024
COST_EVENT = "vlinders.cost"
_MICRO = Decimal("0.000001")


def gateway_url() -> str:
    host = str(settings.VLINDERS_GATEWAY_HOST)
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 address
    return f"http://{host}:{settings.VLINDERS_GATEWAY_PORT}{GATEWAY_PATH}"


def _timeout() -> httpx.Timeout:
    """Connect quickly or say the gateway is down; wait for tokens as long as a model may run
    (the gateway's own per-model timeout, 300 s by default, ends a reply before this)."""
    read = float(getattr(settings, "VLINDERS_CONSOLE_GATEWAY_READ_TIMEOUT_S", 330))
    return httpx.Timeout(connect=5.0, read=read, write=30.0, pool=5.0)


def openai_error(
    message: str,
    *,
    type_: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> dict[str, Any]:
    """An error in OpenAI's shape, as the gateway writes them."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def cost_display(amount: Decimal) -> str:
    """A reply's cost for people: USD to six places (the console's per-request precision)."""
    if amount == 0:
        return "$0.00"
    if amount < _MICRO:
        return "< $0.000001"
    return f"${amount.quantize(_MICRO):f}"


@dataclass(frozen=True)
class GatewayCall:
    """One request on its way to the gateway: everything the relay needs, no ORM."""

    model: AvailableModel
    body: dict[str, Any]
    secret: str = field(repr=False)
    key_id: str


@dataclass(frozen=True)
class Reply:
    """A finished exchange without streaming: the reply or the gateway's refusal."""

    status: int
    content: str = ""
    usage: dict[str, Any] | None = None
    error: str = ""


def _headers(call: GatewayCall, *, stream: bool) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {call.secret}",
        "Accept": "text/event-stream" if stream else "application/json",
    }


def _unreachable(error: Exception) -> JsonResponse:
    logger.warning("playground: the gateway at %s cannot be reached: %r", gateway_url(), error)
    return JsonResponse(
        openai_error(
            "The gateway cannot be reached right now; retry shortly. (The console could not "
            "connect to it.)",
            type_="server_error",
            code="gateway_unreachable",
        ),
        status=502,
    )


def _gateway_error(status: int, raw: bytes, headers: httpx.Headers) -> JsonResponse:
    """The gateway's refusal, passed on with its status, in OpenAI's shape."""
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if not (isinstance(body, dict) and isinstance(body.get("error"), dict)):
        body = openai_error(
            f"The gateway answered HTTP {status}.", type_="server_error", code="gateway_error"
        )
    response = JsonResponse(body, status=status)
    for name in ("Retry-After", "x-request-id"):
        if name in headers:
            response[name] = headers[name]
    return response


async def _read_bounded(upstream: httpx.Response) -> bytes:
    raw = b""
    async for part in upstream.aiter_bytes():
        raw += part
        if len(raw) >= MAX_ERROR_BYTES:
            break
    return raw[:MAX_ERROR_BYTES]


async def open_stream(call: GatewayCall) -> HttpResponseBase:
    """Send the request and wait for the gateway's status: a refusal is answered as such; a
    200 becomes a streaming response that relays the events (and closes the connection)."""
    client = httpx.AsyncClient(timeout=_timeout(), trust_env=False)
    request = client.build_request(
        "POST", gateway_url(), json=call.body, headers=_headers(call, stream=True)
    )
    try:
        upstream = await client.send(request, stream=True)
    except httpx.HTTPError as error:
        await client.aclose()
        return _unreachable(error)
    if upstream.status_code != 200:
        try:
            raw = await _read_bounded(upstream)
        except httpx.HTTPError:
            raw = b""
        finally:
            await upstream.aclose()
            await client.aclose()
        if upstream.status_code == 401:
            await _forget(call)
        return _gateway_error(upstream.status_code, raw, upstream.headers)
    response = StreamingHttpResponse(
        _relay(client, upstream, call), content_type="text/event-stream; charset=utf-8"
    )
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # a proxy in front must not buffer the tokens
    return response


async def _forget(call: GatewayCall) -> None:
    """The gateway refused the credential (its snapshot record was lost, or it was revoked):
    the next message gets a renewed one instead of the same refusal."""
    try:
        await sync_to_async(console_credential_forget, thread_sensitive=False)(call.key_id)
    except redis.RedisError:
        logger.warning("playground: forgetting credential %s failed", call.key_id)


def _sse(data: str, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    body = "".join(f"data: {line}\n" for line in data.split("\n"))
    return f"{head}{body}\n".encode()


def reply_cost(model: AvailableModel, usage: dict[str, Any]) -> tuple[int, int, Decimal]:
    """A reply's prompt and completion tokens, from its usage, and its cost in USD: the
    gateway's formula with the catalog's prices, in Decimal."""
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    amount = cost(
        prompt,
        completion,
        input_per_mtok=model.price_input_per_mtok,
        output_per_mtok=model.price_output_per_mtok,
    )
    return prompt, completion, amount


def cost_event(model: AvailableModel, usage: dict[str, Any], request_id: str | None) -> bytes:
    """The console's own last event: the reply's tokens and cost (exact, and for display)."""
    prompt, completion, amount = reply_cost(model, usage)
    payload = {
        "request_id": request_id,
        "model": model.name,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "cost": f"{amount:f}",
        "cost_display": cost_display(amount),
    }
    return _sse(json.dumps(payload, separators=(",", ":")), event=COST_EVENT)


def _error_event(message: str, code: str) -> bytes:
    return _sse(json.dumps(openai_error(message, type_="server_error", code=code)))


class _RelayState:
    """What ``_relay`` has seen of the gateway's stream."""

    def __init__(self, model: AvailableModel) -> None:
        self.model = model
        self.usage: dict[str, Any] | None = None
        self.request_id: str | None = None
        self.cost_sent = self.done = self.failed = False

    def event(self, data: str) -> bytes:
        """Pass one event on (``data`` joined from its ``data:`` lines), noting what matters."""
        if data == "[DONE]":
            self.done = True
            return self.cost() + _sse(data)
        try:
            payload = json.loads(data)
        except ValueError:
            payload = None
        if isinstance(payload, dict):
            if payload.get("usage"):
                self.usage = payload["usage"]
                self.request_id = payload.get("id") or self.request_id
            self.failed = self.failed or "error" in payload
        return _sse(data)

    def cost(self) -> bytes:
        if self.usage is None or self.cost_sent:
            return b""
        self.cost_sent = True
        return cost_event(self.model, self.usage, self.request_id)

    def end(self) -> bytes:
        """What to add when the gateway's stream ended: the cost if not sent yet, and an error
        event if it ended with neither ``[DONE]`` nor an error of its own."""
        out = self.cost()
        if not self.done and not self.failed:
            out += _error_event("The reply ended early (the gateway sent no end).", "incomplete")
        return out


async def _relay(
    client: httpx.AsyncClient, upstream: httpx.Response, call: GatewayCall
) -> AsyncIterator[bytes]:
    """The gateway's events, each passed on as it arrives; the usage chunk is noted, and the
    cost event goes out before ``[DONE]`` (or at the end of a stream cut short after usage)."""
    state = _RelayState(call.model)
    lines: list[str] = []
    try:
        async for line in upstream.aiter_lines():
            if line.startswith("data:"):
                lines.append(line[5:].removeprefix(" "))
            elif not line and lines:  # a blank line ends an event
                yield state.event("\n".join(lines))
                lines = []
        if lines:
            yield state.event("\n".join(lines))
    except httpx.HTTPError as error:
        logger.warning("playground: the gateway's stream broke off: %r", error)
        state.failed = True
        yield _error_event(
            "The gateway stopped answering before the reply was complete.", "gateway_stream_cut"
        )
    finally:
        await upstream.aclose()
        await client.aclose()
    tail = state.end()
    if tail:
        yield tail


async def complete(call: GatewayCall) -> Reply:
    async with httpx.AsyncClient(timeout=_timeout(), trust_env=False) as client:
        try:
            upstream = await client.post(
                gateway_url(), json=call.body, headers=_headers(call, stream=False)
            )
        except httpx.HTTPError as error:
            logger.warning("playground: the gateway cannot be reached: %r", error)
            return Reply(status=502, error="The gateway cannot be reached right now; retry.")
    try:
        body = upstream.json()
    except ValueError:
        body = None
    if upstream.status_code == 401:
        await _forget(call)
    if upstream.status_code != 200:
        problem = body.get("error") if isinstance(body, dict) else None
        message = problem.get("message") if isinstance(problem, dict) else None
        return Reply(
            status=upstream.status_code,
            error=str(message or f"The gateway answered HTTP {upstream.status_code}."),
        )
    try:
        content = body["choices"][0]["message"]["content"] or ""
        usage = body.get("usage") or {}
    except (TypeError, KeyError, IndexError):
        return Reply(status=502, error="The gateway's answer could not be read.")
    return Reply(status=200, content=str(content), usage=usage)
