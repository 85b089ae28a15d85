"""The gateway through the official ``openai`` SDK, on a real local Ray Serve.

Models here run on the synthetic engine: a labelled test engine (not a model) that emits
deterministic filler tokens and counts them truthfully.
"""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.django_db, pytest.mark.ray]


def test_models_lists_only_what_the_key_may_use(client):
    names = sorted(model.id for model in client.models.list())
    # Not syn-private: it is restricted to another organisation.
    assert names == [
        "minilm",
        "smollm2",
        "smollm2-gguf",
        "syn-ab",
        "syn-alias",
        "syn-cached",
        "syn-fast",
        "syn-load",
        "syn-slow",
        "syn-tight",
        "upstream-badkey",
        "upstream-syn",
    ]
    assert client.models.retrieve("syn-alias").id == "syn-alias"


def test_models_respects_the_keys_allowed_models(gateway, make_tenant):
    import openai

    _, _, secret = make_tenant(allowed_models=["syn-fast"])
    client = openai.OpenAI(base_url=f"{gateway.base_url}/v1", api_key=secret, max_retries=0)
    assert [m.id for m in client.models.list()] == ["syn-fast"]
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("syn-slow")


def test_chat_completion_with_usage(client):
    response = client.chat.completions.create(
        model="syn-fast",
        messages=[{"role": "user", "content": "four words of prompt"}],
        max_tokens=5,
    )
    assert response.model == "syn-fast"
    assert response.choices[0].finish_reason == "length"
    assert len(response.choices[0].message.content.split()) == 5
    # The synthetic engine's tokenizer: words + 4 per message + 2 per chat.
    assert response.usage.prompt_tokens == 4 + 4 + 2
    assert response.usage.completion_tokens == 5
    assert response.usage.total_tokens == 15


def test_alias_routes_to_its_target_and_echoes_the_asked_name(client):
    direct = client.chat.completions.create(
        model="syn-fast", messages=[{"role": "user", "content": "hi"}], seed=3
    )
    aliased = client.chat.completions.create(
        model="syn-alias", messages=[{"role": "user", "content": "hi"}], seed=3
    )
    assert aliased.model == "syn-alias"
    assert aliased.choices[0].message.content == direct.choices[0].message.content
    assert aliased.choices[0].finish_reason == "stop"


def test_n_stop_and_seed(client):
    response = client.chat.completions.create(
        model="syn-fast", messages=[{"role": "user", "content": "x"}], n=3, seed=7
    )
    assert [c.index for c in response.choices] == [0, 1, 2]
    assert response.usage.completion_tokens == sum(
        len(c.message.content.split()) for c in response.choices
    )
    first_word = response.choices[0].message.content.split()[1]
    stopped = client.chat.completions.create(
        model="syn-fast", messages=[{"role": "user", "content": "x"}], seed=7, stop=[first_word]
    )
    assert (
        stopped.choices[0].message.content.split()
        == response.choices[0].message.content.split()[:1]
    )
    assert stopped.choices[0].finish_reason == "stop"


def test_completions_with_a_list_of_prompts(client):
    response = client.completions.create(
        model="syn-fast", prompt=["one two", "three"], max_tokens=3
    )
    assert len(response.choices) == 2
    assert response.usage.prompt_tokens == 3
    assert response.usage.completion_tokens == 6


def test_streaming_chat_with_usage(client):
    stream = client.chat.completions.create(
        model="syn-fast",
        messages=[{"role": "user", "content": "stream please"}],
        max_tokens=6,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(text.split()) == 6
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == 6
    assert chunks[-1].usage.prompt_tokens == 2 + 4 + 2
    assert all(c.usage is None for c in chunks[:-1])
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"


def test_streaming_without_usage_has_no_usage_chunk(client):
    stream = client.chat.completions.create(
        model="syn-fast", messages=[{"role": "user", "content": "x"}], stream=True
    )
    chunks = list(stream)
    assert all(c.choices for c in chunks)
    assert all(c.usage is None for c in chunks)


def test_streaming_completions(client):
    stream = client.completions.create(
        model="syn-fast",
        prompt="abc",
        max_tokens=4,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices).split().__len__() == 4
    assert chunks[-1].usage.completion_tokens == 4


def test_openai_upstream_engine_forwards_including_streams(client):
    response = client.chat.completions.create(
        model="upstream-syn", messages=[{"role": "user", "content": "via upstream"}], max_tokens=4
    )
    assert response.model == "upstream-syn"
    assert response.usage.completion_tokens == 4
    assert response.usage.prompt_tokens == 2 + 4 + 2
    chunks = list(
        client.chat.completions.create(
            model="upstream-syn",
            messages=[{"role": "user", "content": "via upstream"}],
            max_tokens=4,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].usage.completion_tokens == 4


def test_every_response_has_a_request_id(client):
    raw = client.chat.completions.with_raw_response.create(
        model="syn-fast", messages=[{"role": "user", "content": "x"}]
    )
    assert raw.headers["x-request-id"]
