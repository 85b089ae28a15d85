"""The gateway's request validation and its token reservation (no Ray, no Redis)."""

from __future__ import annotations

import pytest

from inference.serving import requests
from inference.serving.errors import ApiError


def test_a_clients_priority_never_reaches_the_engine():
    parsed = requests.parse(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "priority": -100},
        "chat.completions",
    )
    assert "priority" not in parsed.body
    parsed = requests.parse({"model": "m", "input": "hi", "priority": -100}, "embeddings")
    assert "priority" not in parsed.body


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("héllo", (6, 1)),
        (["a", "bc"], (3, 2)),
        ([1, 2, 3], (3, 1)),
        ([[1, 2], [3]], (3, 2)),
    ],
)
def test_embedding_inputs_are_measured(value, expected):
    parsed = requests.parse({"model": "m", "input": value}, "embeddings")
    assert (parsed.prompt_bytes, parsed.prompt_parts) == expected
    assert parsed.endpoint == "embeddings"
    assert not parsed.stream


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": ""}, "input"),
        ({"input": []}, "input"),
        ({"input": ["ok", ""]}, "input"),
        ({"input": [[1], []]}, "input"),
        ({"input": ["x"] * (requests.MAX_EMBEDDING_INPUTS + 1)}, "input"),
        ({"input": {"text": "x"}}, "input"),
        ({"input": "x", "stream": True}, "stream"),
        ({"input": "x", "encoding_format": "int8"}, "encoding_format"),
        ({"input": "x", "user": 5}, "user"),
        ({"input": "x", "model": ""}, "model"),
    ],
)
def test_bad_embedding_requests_are_400_naming_the_param(body, param):
    with pytest.raises(ApiError) as caught:
        requests.parse({"model": "m", **body}, "embeddings")
    assert caught.value.status == 400
    assert caught.value.param == param


def test_embeddings_reserve_their_input_and_no_output():
    parsed = requests.parse({"model": "m", "input": ["abcd", "ef"]}, "embeddings")
    assert requests.reserved_tokens(parsed, context_length=512) == (6, 0)
    # Each input is capped at the context length (the engine truncates or refuses beyond it).
    long = requests.parse({"model": "m", "input": ["x" * 1000, "y" * 1000]}, "embeddings")
    assert requests.reserved_tokens(long, context_length=256) == (512, 0)
