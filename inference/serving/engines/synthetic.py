"""The synthetic engine: a labelled TEST AND BENCHMARK engine, not a model.

It produces deterministic filler tokens at a configured pace (time to first token, time per
output token) so the gateway, the limiter and metering can be tested and benchmarked without a
model. It counts tokens truthfully under its own tokenizer (whitespace-separated words, plus a
fixed overhead per chat message), and the counts it reports are exactly what it consumed and
produced. Every response says ``"system_fingerprint": "vlinders-synthetic"``.

``start_delay_s`` simulates a model's cold start: ``start()`` (awaited by the model server's
constructor, before Ray Serve counts the replica as ready) sleeps that long, as a real engine
does while it loads weights. It is how the scale-to-zero tests make a cold start measurable.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from inference.serving import errors
from inference.serving.engines.base import Endpoint

FINGERPRINT = "vlinders-synthetic"
# The filler "tokens": the NATO alphabet, one word per token.
_VOCAB = [
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india",
    "juliet", "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo",
    "sierra", "tango", "uniform", "victor", "whiskey", "xray", "yankee", "zulu",
]  # fmt: skip
TOKENS_PER_MESSAGE = 4
TOKENS_PER_CHAT = 2


def count_words(text: str) -> int:
    return len(text.split())


def _message_text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):  # content parts: take the text ones
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return str(content or "")


class SyntheticEngine:
    """See the module docstring. Arguments: ``ttft_ms``, ``tpot_ms``, ``default_max_tokens``
    (the length at which a reply ends by itself, with ``finish_reason`` "stop"), and
    ``start_delay_s`` (a simulated cold start: how long ``start()`` takes)."""

    def __init__(
        self,
        *,
        model: str,
        ttft_ms: float = 0.0,
        tpot_ms: float = 0.0,
        default_max_tokens: int = 16,
        start_delay_s: float = 0.0,
    ) -> None:
        self.model = model
        self.ttft = ttft_ms / 1000
        self.tpot = tpot_ms / 1000
        self.default_max_tokens = default_max_tokens
        self.start_delay = max(float(start_delay_s), 0.0)
        self.started = False
        self.active = 0
        self.cancelled = 0

    async def start(self) -> None:
        """The simulated load: ``start_delay_s`` of waiting, then ready."""
        if self.start_delay:
            await asyncio.sleep(self.start_delay)
        self.started = True

    async def check_health(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    # --- the "model" ---

    def _prompt(self, endpoint: Endpoint, body: dict[str, Any]) -> list[str]:
        if endpoint == "chat.completions":
            return [" ".join(_message_text(m) for m in body["messages"])]
        prompt = body["prompt"]
        if isinstance(prompt, str):
            return [prompt]
        if prompt and isinstance(prompt[0], int):
            return [" ".join(str(t) for t in prompt)]
        if prompt and isinstance(prompt[0], list):
            return [" ".join(str(t) for t in p) for p in prompt]
        return [str(p) for p in prompt]

    def prompt_tokens(self, endpoint: Endpoint, body: dict[str, Any]) -> int:
        if endpoint == "chat.completions":
            words = sum(count_words(_message_text(m)) for m in body["messages"])
            return words + TOKENS_PER_MESSAGE * len(body["messages"]) + TOKENS_PER_CHAT
        prompt = body["prompt"]
        if prompt and isinstance(prompt, list) and isinstance(prompt[0], int):
            return len(prompt)
        if prompt and isinstance(prompt, list) and isinstance(prompt[0], list):
            return sum(len(p) for p in prompt)
        return sum(count_words(p) for p in self._prompt(endpoint, body))

    def _tokens(self, prompt: str, seed: int, index: int) -> list[str]:
        digest = hashlib.sha256(f"{seed}:{index}:{prompt}".encode()).digest()
        start = int.from_bytes(digest[:4], "big")
        return [" " + _VOCAB[(start + 7 * i) % len(_VOCAB)] for i in range(self.default_max_tokens)]

    def _refuse_unsupported(self, body: dict[str, Any]) -> None:
        """Like a real engine, refuse what it cannot do, naming the parameter (a 400)."""
        for param in ("logprobs", "top_logprobs", "tools", "response_format"):
            if body.get(param):
                raise errors.invalid(
                    f"The synthetic test engine does not support '{param}'.", param=param
                )

    def _plan(self, endpoint: Endpoint, body: dict[str, Any]) -> list[tuple[list[str], str]]:
        """Per choice: the tokens it will emit, and its finish reason."""
        self._refuse_unsupported(body)
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        stop = body.get("stop")
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        seed = int(body.get("seed") or 0)
        plans = []
        prompts = self._prompt(endpoint, body)
        for p_index, prompt in enumerate(prompts):
            for choice in range(int(body.get("n") or 1)):
                tokens = self._tokens(prompt, seed, p_index * 1000 + choice)
                finish = "stop"
                if limit is not None and limit < len(tokens):
                    tokens, finish = tokens[:limit], "length"
                text = ""
                for i, token in enumerate(tokens):
                    hit = next((s for s in stops if s in text + token), None)
                    if hit is not None:
                        tokens, finish = tokens[:i], "stop"
                        break
                    text += token
                plans.append((tokens, finish))
        return plans

    # --- OpenAI shapes ---

    def _usage(self, prompt: int, completion: int) -> dict[str, Any]:
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }

    async def complete(
        self, endpoint: Endpoint, body: dict[str, Any], *, priority: int = 0
    ) -> dict[str, Any]:
        if endpoint == "embeddings":
            raise errors.invalid("The synthetic engine does not serve embeddings.", "model")
        plans = self._plan(endpoint, body)
        longest = max((len(tokens) for tokens, _ in plans), default=0)
        await asyncio.sleep(self.ttft + self.tpot * max(longest - 1, 0))
        prompt = self.prompt_tokens(endpoint, body)
        completion = sum(len(tokens) for tokens, _ in plans)
        created = int(time.time())
        if endpoint == "chat.completions":
            choices: list[dict[str, Any]] = [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": "".join(tokens)},
                    "finish_reason": finish,
                    "logprobs": None,
                }
                for i, (tokens, finish) in enumerate(plans)
            ]
            kind = "chat.completion"
        else:
            choices = [
                {"index": i, "text": "".join(tokens), "finish_reason": finish, "logprobs": None}
                for i, (tokens, finish) in enumerate(plans)
            ]
            kind = "text_completion"
        return {
            "id": f"{'chatcmpl' if kind == 'chat.completion' else 'cmpl'}-{uuid.uuid4().hex}",
            "object": kind,
            "created": created,
            "model": self.model,
            "system_fingerprint": FINGERPRINT,
            "choices": choices,
            "usage": self._usage(prompt, completion),
        }

    async def stream(
        self, endpoint: Endpoint, body: dict[str, Any], *, priority: int = 0
    ) -> AsyncIterator[dict[str, Any]]:
        if endpoint == "embeddings":
            raise errors.invalid("The synthetic engine does not serve embeddings.", "model")
        plans = self._plan(endpoint, body)
        prompt = self.prompt_tokens(endpoint, body)
        chat = endpoint == "chat.completions"
        ident = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        created = int(time.time())
        emitted = 0
        finished = False
        self.active += 1
        try:

            def chunk(choices: list[dict[str, Any]]) -> dict[str, Any]:
                return {
                    "id": ident,
                    "object": "chat.completion.chunk" if chat else "text_completion",
                    "created": created,
                    "model": self.model,
                    "system_fingerprint": FINGERPRINT,
                    "choices": choices,
                    "usage": self._usage(prompt, emitted),
                }

            await asyncio.sleep(self.ttft)
            if chat:
                yield chunk(
                    [
                        {
                            "index": i,
                            "delta": {"role": "assistant", "content": ""},
                            "finish_reason": None,
                            "logprobs": None,
                        }
                        for i in range(len(plans))
                    ]
                )
            longest = max((len(tokens) for tokens, _ in plans), default=0)
            for step in range(longest):
                if step:
                    await asyncio.sleep(self.tpot)
                choices = []
                for i, (tokens, _) in enumerate(plans):
                    if step < len(tokens):
                        emitted += 1
                        piece: dict[str, Any] = (
                            {"delta": {"content": tokens[step]}} if chat else {"text": tokens[step]}
                        )
                        choices.append(
                            {"index": i, **piece, "finish_reason": None, "logprobs": None}
                        )
                yield chunk(choices)
            yield chunk(
                [
                    {
                        "index": i,
                        **({"delta": {}} if chat else {"text": ""}),
                        "finish_reason": finish,
                        "logprobs": None,
                    }
                    for i, (_, finish) in enumerate(plans)
                ]
            )
            finished = True
            yield chunk([])
        finally:
            self.active -= 1
            if not finished:  # the consumer went away: a disconnect reached the engine
                self.cancelled += 1
