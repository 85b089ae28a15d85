"""The benchmarks' mock upstream (bench/mock_upstream.py) speaks OpenAI's chat API as the
official client reads it: a whole completion with usage, a stream with the usage chunk when
asked, and an OpenAI-shaped 400 for a bad body. No Ray, no model: a mock on a local port."""

from __future__ import annotations

import asyncio
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import mock_upstream


@pytest.fixture(scope="module")
def client() -> Iterator[openai.OpenAI]:
    """The mock on a free local port, served by an event loop in a thread of its own."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(mock_upstream.make_app())

    async def start() -> None:
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    api = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
    try:
        yield api
    finally:
        api.close()
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


MESSAGES = [{"role": "user", "content": "three words here"}]


def test_completion_is_the_labelled_mock_answer_with_usage(client) -> None:
    reply = client.chat.completions.create(model="bench", messages=MESSAGES)
    assert reply.model == "bench"
    assert reply.system_fingerprint == "mock-upstream"
    assert reply.choices[0].message.content == mock_upstream.ANSWER
    assert reply.choices[0].finish_reason == "stop"
    words = len(mock_upstream.ANSWER.split())
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (3 + 4, words)
    assert reply.usage.total_tokens == 7 + words


def test_max_tokens_cuts_the_answer(client) -> None:
    reply = client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=2)
    assert reply.choices[0].message.content == "This is"
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None
    assert reply.usage.completion_tokens == 2


def test_stream_carries_the_words_then_usage_when_asked(client) -> None:
    stream = client.chat.completions.create(
        model="m", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == mock_upstream.ANSWER
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == len(mock_upstream.ANSWER.split())
    assert all(c.usage is None for c in chunks[:-1])


def test_stream_without_include_usage_has_no_usage_chunk(client) -> None:
    stream = client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
    chunks = list(stream)
    assert all(c.choices and c.usage is None for c in chunks)


def test_bad_body_is_an_openai_400(client) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="m", messages="not a list")  # type: ignore[arg-type]
    assert caught.value.status_code == 400
    assert "messages" in caught.value.message
