"""The llama.cpp engine through the whole platform: the official ``openai`` SDK, the gateway,
Ray Serve, and SmolLM2-135M-Instruct as its Q4_1 GGUF (``smollm2-gguf`` in the package's
deployed spec, ``tests/serving/conftest.py``; the engine itself is tested in
``test_llamacpp_engine.py``)."""

from __future__ import annotations

import openai
import pytest

from tests.serving.engine_support import (
    capital_as_json,
    drop_after_three_tokens,
    usage_event,
    wait_for_cancellation,
)

pytestmark = [pytest.mark.django_db, pytest.mark.ray]

MODEL = "smollm2-gguf"
FRANCE = [{"role": "user", "content": "Name the capital of France."}]
EOS = "2"  # SmolLM2's end-of-turn token id: a logit bias of -100 keeps it from ending a reply


def test_chat_is_answered_and_metered_with_the_engine_counts(usage_broker, client):
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=FRANCE, max_tokens=30, temperature=0
    )
    reply = raw.parse()
    # What the model answers is not asserted: its greedy answer depends on the CPU's kernels
    # (llama.cpp builds for the machine: AVX2, AVX-512, AMX give different answers). The engine's
    # contract is: a whole answer, ended by the model, counted exactly
    # (tests/serving/test_llamacpp_engine.py counts the tokens).
    assert reply.choices[0].message.content
    assert reply.choices[0].finish_reason == "stop"
    assert reply.model == MODEL
    assert reply.usage.prompt_tokens > 20  # the GGUF's chat template, system prompt included
    assert 2 <= reply.usage.completion_tokens < 30  # text and the end-of-turn token
    event = usage_event(usage_broker, raw.headers["x-request-id"])
    assert (event["prompt_tokens"], event["completion_tokens"]) == (
        reply.usage.prompt_tokens,
        reply.usage.completion_tokens,
    )
    assert event["status"] == 200
    # Prompt tokens reused from llama.cpp's KV cache are reported and metered, as vLLM's are.
    again = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=FRANCE, max_tokens=30, temperature=0
    )
    cached = again.parse().usage.prompt_tokens_details.cached_tokens
    assert 0 < cached < reply.usage.prompt_tokens
    assert usage_event(usage_broker, again.headers["x-request-id"])["cached_tokens"] == cached


def test_stream_with_include_usage(client):
    # Asked twice first: a greedy answer depends on how much of the prompt the engine's KV
    # cache held from the request before (test_llamacpp_engine.py, ``settled``); from the second
    # call on, the same request finds the same cache and answers the same.
    for _ in range(2):
        whole = client.chat.completions.create(
            model=MODEL, messages=FRANCE, max_tokens=30, temperature=0
        )
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=FRANCE,
            max_tokens=30,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content  # greedy: the same answer, streamed
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert all(c.usage is None for c in chunks[:-1])  # usage only where the client asked
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_completions(client):
    reply = client.completions.create(
        model=MODEL, prompt="The capital of France is", max_tokens=5, temperature=0
    )
    assert reply.choices[0].text.startswith(" Paris")
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 5


def test_a_json_schema_reply_parses(client):
    answer = capital_as_json(client, MODEL)
    assert set(answer) == {"city", "country"}  # the schema held, whatever the model knows
    assert isinstance(answer["city"], str)
    assert isinstance(answer["country"], str)


def test_a_seeded_sample_is_reproducible(client):
    def sample() -> str:
        reply = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Tell me a short story."}],
            max_tokens=16,
            temperature=1.0,
            seed=11,
        )
        return reply.choices[0].message.content or ""

    assert sample() == sample()


def test_a_prompt_over_the_context_is_an_openai_400(client):
    long = " ".join(["word"] * 2100)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": long}], max_tokens=5
        )
    assert caught.value.code == "context_length_exceeded"
    assert caught.value.param == "messages"
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=MODEL, messages=FRANCE, max_tokens=5, stream=True, logprobs=True
        )
    assert caught.value.param == "logprobs"


def test_embeddings_are_refused_with_a_400(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model=MODEL, input="hello")
    assert caught.value.code == "unsupported_endpoint"


def test_a_client_disconnect_stops_the_generation(gateway, usage_broker, client):
    before = gateway.metric("vlinders_engine_requests_cancelled_total", model=MODEL)
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=FRANCE,
        max_tokens=400,
        stream=True,
        logit_bias={EOS: -100},  # it would write all 400 tokens
    )
    request_id = drop_after_three_tokens(raw)

    event = usage_event(usage_broker, request_id)
    assert event["status"] == 499
    assert 3 <= event["completion_tokens"] < 400  # the engine's own count, cut short
    wait_for_cancellation(gateway, MODEL, before)
    # The replica's one generation slot is free again: the next request is answered.
    reply = client.chat.completions.create(
        model=MODEL, messages=FRANCE, max_tokens=30, temperature=0
    )
    assert reply.choices[0].message.content
    assert reply.choices[0].finish_reason == "stop"
