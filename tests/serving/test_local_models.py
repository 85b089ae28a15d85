"""The gateway's in-process models (``openai`` engine: no Ray hop, ``model_server.LocalModel``)
when an engine cannot start: that model's requests are refused with a 503 at once, plain and
streamed, while the configure goes on (a failed configure would keep a new gateway replica from
starting, and every other model with it). The Ray side (a gateway deployed with such a model
still reaches RUNNING) is ``tests/inference/test_deploy_apply.py``."""

from __future__ import annotations

import asyncio

import pytest

from inference.serving import errors
from inference.serving.model_server import UNAVAILABLE_RETRY_S, LocalModel, UnavailableModel

ARGS = {
    "spec_version": 1,
    "name": "upstream-x",
    "deployment": "model-upstream-x",
    "engine": "openai",
    "source": {"base_url": "http://127.0.0.1:9/v1", "model": "remote"},
    "engine_args": {"tpot_ms": 5},  # an argument the upstream engine refuses
    "redis_url": "redis://127.0.0.1:6379/0",
}


def test_an_engine_that_cannot_start_raises_and_its_stand_in_refuses_with_503() -> None:
    with pytest.raises(TypeError):
        asyncio.run(LocalModel(ARGS).start())

    stand_in = UnavailableModel(ARGS, "TypeError: tpot_ms")
    asyncio.run(stand_in.start())
    assert stand_in.args != ARGS  # never kept: the next configure tries the engine again
    plain, streamed = stand_in.handles()
    for call in (plain.complete.remote, streamed.stream.remote):
        with pytest.raises(errors.ApiError) as refused:
            call("chat.completions", {"model": "upstream-x", "messages": []}, 0)
        assert refused.value.status == 503
        assert refused.value.code == "model_unavailable"
        assert refused.value.headers == {"Retry-After": str(UNAVAILABLE_RETRY_S)}
        assert "upstream-x" in refused.value.body()["error"]["message"]
    asyncio.run(stand_in.aclose())
