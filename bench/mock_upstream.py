"""A mock OpenAI-compatible upstream for the benchmarks: a fixed short answer, at once.

This is a mock, not a model: it reads no weights and generates nothing. Every reply says so
(its text, ``model`` echoes the request's name, ``system_fingerprint`` is ``mock-upstream``, and
the ``x-mock-upstream`` header is set), so a benchmark can measure what a gateway in front of an
upstream costs without the upstream's own work hiding it.

``POST /v1/chat/completions`` answers a whole ``chat.completion`` with ``usage``, or with
``"stream": true`` a server-sent-event stream of ``chat.completion.chunk`` objects (the role, the
words of the answer, the finish reason, then ``data: [DONE]``); with
``stream_options.include_usage`` a last chunk before ``[DONE]`` carries ``usage`` and no choices,
as OpenAI's API does. ``max_tokens`` (or ``max_completion_tokens``) caps the answer's words.
Prompt tokens are counted as the whitespace-separated words of the messages' text, plus 4 per
message. A body that is not a JSON object with a list of ``messages`` is a 400 in OpenAI's error
shape. ``GET /v1/models`` lists ``mock``; ``GET /health`` answers 200.

    .venv/bin/python bench/mock_upstream.py --port 8100 [--host 127.0.0.1]

Built on aiohttp, with uvloop when it is installed; no access log (it would cost more CPU than
the answer).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from typing import Any

from aiohttp import web

ANSWER = "This is a mock upstream reply, not a model."
WORDS = ANSWER.split(" ")
FINGERPRINT = "mock-upstream"
HEADERS = {"x-mock-upstream": "1"}


def _error(status: int, message: str) -> web.Response:
    body = {"error": {"message": message, "type": "invalid_request_error", "code": None}}
    return web.json_response(body, status=status, headers=HEADERS)


def _prompt_tokens(messages: list[Any]) -> int:
    count = 0
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            count += len(content.split())
        elif isinstance(content, list):  # content parts
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    count += len(part["text"].split())
        count += 4
    return count


def _words(body: dict[str, Any]) -> list[str]:
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    if isinstance(limit, int) and limit > 0:
        return WORDS[:limit]
    return WORDS


async def chat_completions(request: web.Request) -> web.StreamResponse:
    try:
        body = json.loads(await request.read())
    except ValueError:
        return _error(400, "The body is not valid JSON.")
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
        return _error(400, "'messages' is required and must be a list.")
    model = body.get("model") if isinstance(body.get("model"), str) else "mock"
    words = _words(body)
    prompt = _prompt_tokens(body["messages"])
    usage = {
        "prompt_tokens": prompt,
        "completion_tokens": len(words),
        "total_tokens": prompt + len(words),
    }
    finish = "length" if len(words) < len(WORDS) else "stop"
    ident = f"chatcmpl-mock-{uuid.uuid4().hex}"
    created = int(time.time())
    if not body.get("stream"):
        return web.json_response(
            {
                "id": ident,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "system_fingerprint": FINGERPRINT,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": " ".join(words)},
                        "logprobs": None,
                        "finish_reason": finish,
                    }
                ],
                "usage": usage,
            },
            headers=HEADERS,
        )
    options = body.get("stream_options")
    include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
    response = web.StreamResponse(
        headers={**HEADERS, "Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    head = {
        "id": ident,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": FINGERPRINT,
    }

    def chunk(delta: dict[str, Any], reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}
        extra = {"usage": None} if include_usage else {}
        return f"data: {json.dumps({**head, 'choices': [choice], **extra})}\n\n".encode()

    parts = [chunk({"role": "assistant", "content": ""})]
    parts += [chunk({"content": word if i == 0 else " " + word}) for i, word in enumerate(words)]
    parts.append(chunk({}, finish))
    if include_usage:
        parts.append(f"data: {json.dumps({**head, 'choices': [], 'usage': usage})}\n\n".encode())
    parts.append(b"data: [DONE]\n\n")
    await response.write(b"".join(parts))
    await response.write_eof()
    return response


async def models(request: web.Request) -> web.Response:
    return web.json_response(
        {
            "object": "list",
            "data": [{"id": "mock", "object": "model", "created": 0, "owned_by": "mock"}],
        },
        headers=HEADERS,
    )


async def health(request: web.Request) -> web.Response:
    return web.Response(text="ok", headers=HEADERS)


def make_app() -> web.Application:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    args = parser.parse_args()
    try:
        import uvloop

        loop_factory: Any = uvloop.new_event_loop
    except ImportError:
        loop_factory = asyncio.new_event_loop
    web.run_app(
        make_app(),
        host=args.host,
        port=args.port,
        access_log=None,
        print=None,
        loop=loop_factory(),
    )


if __name__ == "__main__":
    main()
