"""The two pieces of a stream the gateway writes itself, whether it relays an engine's stream or
replays one from the response cache: a server-sent event, and the final usage chunk a client
asked for with ``stream_options.include_usage`` (OpenAI's shape: no choices, the usage)."""

from __future__ import annotations

import json
import time
from typing import Any


def sse(payload: dict[str, Any]) -> bytes:
    """One ``data:`` event, compact JSON."""
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()


def usage_chunk(
    *,
    request_id: str,
    model: str,
    endpoint: str,
    prompt_tokens: int,
    completion_tokens: int,
    cached_tokens: int,
) -> dict[str, Any]:
    """The stream's usage chunk, with this request's id (never a cached request's)."""
    usage: dict[str, Any] = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    if cached_tokens:
        usage["prompt_tokens_details"] = {"cached_tokens": cached_tokens}
    return {
        "id": request_id,
        "object": "chat.completion.chunk" if endpoint == "chat.completions" else "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [],
        "usage": usage,
    }
