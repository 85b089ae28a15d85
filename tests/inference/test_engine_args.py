"""The engine-argument schemas: each accepts a good example and names what it refuses."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from inference.engine_args import SCHEMAS, validate_engine_args

GOOD = {
    "vllm": {
        "dtype": "float32",
        "max_model_len": 2048,
        "tensor_parallel_size": 2,
        "pipeline_parallel_size": 1,
        "gpu_memory_utilization": 0.9,
        "enable_prefix_caching": True,
        "quantization": None,
        "max_num_seqs": 64,
        "max_num_batched_tokens": 4096,
        "enforce_eager": False,
        "cpu_kvcache_space_gib": 2,
        "seed": 0,
        "task": "generate",
        "scheduling_policy": "priority",
    },
    "openai": {"timeout_s": 30, "max_connections": 100},
    "synthetic": {"ttft_ms": 50, "tpot_ms": 10.5, "default_max_tokens": 16},
    "llamacpp": {"n_ctx": 2048, "n_threads": 2, "n_batch": 512, "seed": 0, "flash_attn": False},
}

# One argument of the wrong type (or out of range) per engine kind.
BAD_TYPE = {
    "vllm": ("tensor_parallel_size", "two"),
    "openai": ("timeout_s", "30s"),
    "synthetic": ("default_max_tokens", 1.5),
    "llamacpp": ("n_ctx", "2k"),
}


def _messages(error: ValidationError) -> list[str]:
    return error.message_dict["engine_args"]


def test_every_engine_kind_has_a_good_example() -> None:
    assert set(GOOD) == set(SCHEMAS)


@pytest.mark.parametrize("kind", sorted(GOOD))
def test_good_example_is_accepted(kind: str) -> None:
    validate_engine_args(kind, GOOD[kind])
    validate_engine_args(kind, {})  # every argument is optional


@pytest.mark.parametrize("kind", sorted(GOOD))
def test_unknown_argument_is_refused_by_name(kind: str) -> None:
    with pytest.raises(ValidationError) as caught:
        validate_engine_args(kind, {**GOOD[kind], "max_modle_len": 2048})
    assert any("max_modle_len" in message for message in _messages(caught.value))


@pytest.mark.parametrize("kind", sorted(BAD_TYPE))
def test_bad_type_is_refused_naming_the_argument(kind: str) -> None:
    argument, value = BAD_TYPE[kind]
    with pytest.raises(ValidationError) as caught:
        validate_engine_args(kind, {**GOOD[kind], argument: value})
    messages = _messages(caught.value)
    assert len(messages) == 1
    assert messages[0].startswith(f"{argument}:")


@pytest.mark.parametrize(
    ("kind", "args", "argument"),
    [
        ("vllm", {"dtype": "float64"}, "dtype"),
        ("vllm", {"gpu_memory_utilization": 0}, "gpu_memory_utilization"),
        ("vllm", {"gpu_memory_utilization": 1.5}, "gpu_memory_utilization"),
        ("vllm", {"max_model_len": 8}, "max_model_len"),
        ("vllm", {"enforce_eager": "yes"}, "enforce_eager"),
        ("vllm", {"task": "classify"}, "task"),
        ("openai", {"max_connections": 0}, "max_connections"),
        ("synthetic", {"ttft_ms": -1}, "ttft_ms"),
    ],
)
def test_out_of_range_values_are_refused_by_name(kind: str, args: dict, argument: str) -> None:
    with pytest.raises(ValidationError) as caught:
        validate_engine_args(kind, args)
    assert [m.split(":")[0] for m in _messages(caught.value)] == [argument]


def test_every_offending_argument_is_named() -> None:
    with pytest.raises(ValidationError) as caught:
        validate_engine_args("vllm", {"seed": -1, "dtype": "fp64", "bogus": 1})
    text = " ".join(_messages(caught.value))
    assert "seed" in text
    assert "dtype" in text
    assert "bogus" in text


@pytest.mark.parametrize("args", [[], "dtype=float32", None, 3])
def test_engine_args_must_be_an_object(args: object) -> None:
    with pytest.raises(ValidationError) as caught:
        validate_engine_args("vllm", args)
    assert _messages(caught.value)[0].startswith("engine_args:")


def test_unknown_engine_kind_is_refused_on_engine_kind() -> None:
    with pytest.raises(ValidationError) as caught:
        validate_engine_args("tgi", {})
    assert "engine_kind" in caught.value.message_dict


def test_a_synthetic_argument_is_not_a_vllm_argument() -> None:
    with pytest.raises(ValidationError) as caught:
        validate_engine_args("vllm", {"ttft_ms": 5})
    assert "ttft_ms" in _messages(caught.value)[0]


def test_the_scheduling_policy_is_fcfs_or_priority() -> None:
    with pytest.raises(ValidationError) as caught:
        validate_engine_args("vllm", {"scheduling_policy": "lottery"})
    assert any("scheduling_policy" in m for m in _messages(caught.value))
