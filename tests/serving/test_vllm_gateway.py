"""A real model through the whole platform: the official ``openai`` SDK, the gateway, Ray Serve,
and SmolLM2-135M-Instruct on the vLLM CPU engine in a model-server replica (one replica for the
test package; the engine itself is tested in depth in ``test_vllm_engine.py``)."""

from __future__ import annotations

import openai
import pytest

pytestmark = [pytest.mark.django_db, pytest.mark.ray]

FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


def test_chat_names_paris(client):
    reply = client.chat.completions.create(
        model="smollm2", messages=FRANCE, max_tokens=24, temperature=0
    )
    assert "Paris" in reply.choices[0].message.content
    assert reply.model == "smollm2"
    assert reply.usage.prompt_tokens > 5
    assert 0 < reply.usage.completion_tokens <= 24


def test_stream_with_usage_from_the_engine(client):
    chunks = list(
        client.chat.completions.create(
            model="smollm2",
            messages=FRANCE,
            max_tokens=12,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Paris" in text
    assert chunks[-1].choices == []
    assert 0 < chunks[-1].usage.completion_tokens <= 12


def test_vllm_validation_is_an_openai_400(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="smollm2", messages=FRANCE, max_tokens=100_000)
    assert caught.value.param == "max_tokens"
