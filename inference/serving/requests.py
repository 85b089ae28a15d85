"""Validation of OpenAI request bodies at the gateway, and the token estimate it reserves.

The gateway checks what it needs to route, limit and meter a request; everything else (tools,
response_format, logprobs, …) passes through to the engine, whose own validation answers with an
OpenAI-shaped 400. Each check names the offending ``param``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from inference.serving import errors
from inference.serving.engines.base import Endpoint

__all__ = ["Endpoint", "ParsedRequest", "parse", "parse_json", "reserved_tokens"]

MAX_N = 16
MAX_STOP = 4
# OpenAI's limit on the inputs of one embeddings request.
MAX_EMBEDDING_INPUTS = 2048
_ROLES = {"system", "developer", "user", "assistant", "tool", "function"}
# Tokens a chat template may add around each message and the reply (an upper bound for the
# templates of common models; the reservation must not be lower than the true count).
_TEMPLATE_TOKENS_PER_MESSAGE = 8
_TEMPLATE_TOKENS_PER_REQUEST = 16


@dataclass(frozen=True)
class ParsedRequest:
    """A validated request: the body to forward, and what the gateway needs from it."""

    endpoint: Endpoint
    body: dict[str, Any]
    model: str
    stream: bool
    include_usage: bool
    n: int
    max_tokens: int | None
    prompt_bytes: int
    prompt_parts: int


# A ``\\uD800``-``\\uDFFF`` escape: JSON allows it alone, but a lone surrogate is no text.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def parse_json(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object, or a 400: malformed, too deeply nested, or holding a lone
    surrogate (which no engine, log or encoder can take)."""
    try:
        body = json.loads(raw)
        if _SURROGATE_ESCAPE.search(raw):
            json.dumps(body, ensure_ascii=False).encode()  # raises on a lone surrogate
    except (ValueError, UnicodeError) as error:
        raise errors.invalid(
            f"We could not parse the JSON body of your request: {error}.", code="invalid_json"
        ) from error
    except RecursionError as error:
        raise errors.invalid(
            "The JSON body of your request is nested too deeply.", code="invalid_json"
        ) from error
    if not isinstance(body, dict):
        raise errors.invalid("The request body must be a JSON object.", code="invalid_json")
    return body


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_sampling(body: dict[str, Any]) -> None:
    checks: list[tuple[str, bool, str]] = [
        (
            "temperature",
            _is_number(body.get("temperature")) and 0 <= body["temperature"] <= 2,
            "must be a number between 0 and 2",
        ),
        (
            "top_p",
            _is_number(body.get("top_p")) and 0 < body["top_p"] <= 1,
            "must be a number greater than 0 and at most 1",
        ),
        ("seed", _is_int(body.get("seed")), "must be an integer"),
        ("user", isinstance(body.get("user"), str), "must be a string"),
        (
            "presence_penalty",
            _is_number(body.get("presence_penalty")) and -2 <= body["presence_penalty"] <= 2,
            "must be a number between -2 and 2",
        ),
        (
            "frequency_penalty",
            _is_number(body.get("frequency_penalty")) and -2 <= body["frequency_penalty"] <= 2,
            "must be a number between -2 and 2",
        ),
    ]
    for param, ok, what in checks:
        if body.get(param) is not None and not ok:
            raise errors.invalid(f"'{param}' {what}.", param=param)
    stop = body.get("stop")
    if stop is not None:
        stops = [stop] if isinstance(stop, str) else stop
        if (
            not isinstance(stops, list)
            or len(stops) > MAX_STOP
            or not all(isinstance(s, str) and s for s in stops)
        ):
            raise errors.invalid(
                f"'stop' must be a non-empty string or a list of at most {MAX_STOP} of them.",
                param="stop",
            )


def _max_tokens(body: dict[str, Any], endpoint: Endpoint) -> int | None:
    names = (
        ["max_completion_tokens", "max_tokens"]
        if endpoint == "chat.completions"
        else ["max_tokens"]
    )
    for name in names:
        value = body.get(name)
        if value is None:
            continue
        if not _is_int(value) or value < 1:
            raise errors.invalid(f"'{name}' must be a positive integer.", param=name)
        return int(value)
    return None


def _text_bytes(content: Any) -> int:
    """UTF-8 bytes of a message's text; an upper bound on its tokens for byte-level BPE."""
    if content is None:
        return 0
    if isinstance(content, str):
        return len(content.encode())
    return len(json.dumps(content, ensure_ascii=False).encode())


def _chat_prompt(body: dict[str, Any]) -> tuple[int, int]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise errors.invalid("'messages' must be a non-empty array.", param="messages")
    total = 0
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in _ROLES:
            raise errors.invalid(
                f"'messages[{index}]' must be an object with a 'role' of "
                f"{', '.join(sorted(_ROLES))}.",
                param=f"messages[{index}]",
            )
        total += _text_bytes(message.get("content"))
        for extra in ("tool_calls", "name", "function_call"):
            total += _text_bytes(message.get(extra))
    total += _text_bytes(body.get("tools"))
    return total, len(messages)


def _measure_prompts(value: Any, *, allow_empty: bool) -> tuple[int, int] | None:
    """(UTF-8 bytes or token ids, prompts) of an OpenAI prompt-shaped value: a string, a list of
    strings, a list of token ids, or a list of such lists; ``None`` for any other shape. With
    ``allow_empty`` false, an empty string is refused as an empty list always is."""
    if isinstance(value, str) and (allow_empty or value):
        return len(value.encode()), 1
    if isinstance(value, list) and value:
        if all(isinstance(v, str) and (allow_empty or v) for v in value):
            return sum(len(v.encode()) for v in value), len(value)
        if all(_is_int(t) for t in value):
            return len(value), 1
        if all(isinstance(v, list) and v and all(_is_int(t) for t in v) for v in value):
            return sum(len(v) for v in value), len(value)
    return None


def _completion_prompt(body: dict[str, Any]) -> tuple[int, int]:
    measured = _measure_prompts(body.get("prompt"), allow_empty=True)
    if measured is None:
        raise errors.invalid(
            "'prompt' must be a string, a list of strings, or token ids.", param="prompt"
        )
    return measured


def _embedding_input(body: dict[str, Any]) -> tuple[int, int]:
    """(bytes or token ids, inputs) of an embeddings ``input``: a string, a list of strings, a
    list of token ids or a list of such lists, none empty, at most ``MAX_EMBEDDING_INPUTS``."""
    value = body.get("input")
    measured = _measure_prompts(value, allow_empty=False)
    if measured is None or (isinstance(value, list) and len(value) > MAX_EMBEDDING_INPUTS):
        raise errors.invalid(
            "'input' must be a non-empty string, a list of at most "
            f"{MAX_EMBEDDING_INPUTS} non-empty strings, or token ids.",
            param="input",
        )
    return measured


def _parse_embeddings(body: dict[str, Any], model: str) -> ParsedRequest:
    if body.get("stream"):
        raise errors.invalid("Embeddings cannot be streamed.", param="stream")
    fmt = body.get("encoding_format")
    if fmt is not None and fmt not in ("float", "base64"):
        raise errors.invalid(
            "'encoding_format' must be 'float' or 'base64'.", param="encoding_format"
        )
    if body.get("user") is not None and not isinstance(body["user"], str):
        raise errors.invalid("'user' must be a string.", param="user")
    prompt_bytes, parts = _embedding_input(body)
    return ParsedRequest(
        endpoint="embeddings",
        body=body,
        model=model,
        stream=False,
        include_usage=False,
        n=1,
        max_tokens=None,
        prompt_bytes=prompt_bytes,
        prompt_parts=parts,
    )


def parse(body: dict[str, Any], endpoint: Endpoint) -> ParsedRequest:
    """Validate ``body`` for ``endpoint``; raise an OpenAI-shaped 400 naming the param."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise errors.invalid("you must provide a model parameter", param="model")
    # Scheduling priority is the platform's (the organisation's plan), never the client's.
    body = {k: v for k, v in body.items() if k != "priority"}
    if endpoint == "embeddings":
        return _parse_embeddings(body, model)
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise errors.invalid("'stream' must be a boolean.", param="stream")
    options = body.get("stream_options")
    if options is not None:
        if not stream:
            raise errors.invalid(
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                param="stream_options",
            )
        if not isinstance(options, dict) or not isinstance(
            options.get("include_usage", False), bool
        ):
            raise errors.invalid(
                "'stream_options' must be an object with a boolean 'include_usage'.",
                param="stream_options",
            )
    n = body.get("n", 1)
    if n is None:
        n = 1
    if not _is_int(n) or not 1 <= n <= MAX_N:
        raise errors.invalid(f"'n' must be an integer between 1 and {MAX_N}.", param="n")
    _check_sampling(body)
    max_tokens = _max_tokens(body, endpoint)
    if endpoint == "chat.completions":
        prompt_bytes, parts = _chat_prompt(body)
    else:
        prompt_bytes, parts = _completion_prompt(body)
    return ParsedRequest(
        endpoint=endpoint,
        body=body,
        model=model,
        stream=stream,
        include_usage=bool(stream and options and options.get("include_usage")),
        n=int(n),
        max_tokens=max_tokens,
        prompt_bytes=prompt_bytes,
        prompt_parts=parts,
    )


def reserved_tokens(request: ParsedRequest, *, context_length: int) -> tuple[int, int]:
    """(prompt, completion) tokens to reserve: upper bounds of what the request can consume.

    Prompt: its UTF-8 bytes plus chat-template overhead (each byte-level BPE token covers at
    least one byte), capped at the context length (the engine refuses longer prompts).
    Completion: ``n`` times ``max_tokens``, or the whole context length when it is not given.
    A list of completion prompts runs each prompt ``n`` times. Embeddings generate nothing:
    each input is one run, capped at the context length.
    """
    if request.endpoint == "embeddings":
        return min(request.prompt_bytes, context_length * request.prompt_parts), 0
    overhead = (
        _TEMPLATE_TOKENS_PER_REQUEST + _TEMPLATE_TOKENS_PER_MESSAGE * request.prompt_parts
        if request.endpoint == "chat.completions"
        else 0
    )
    runs = request.prompt_parts if request.endpoint == "completions" else 1
    prompt = min(request.prompt_bytes + overhead, context_length * runs)
    per_choice = min(request.max_tokens or context_length, context_length)
    return prompt, per_choice * request.n * runs
