"""JSON Schemas for each engine kind's arguments, and the validation that applies them.

The schemas are the contract of what the catalog may pass to an engine (deployment spec,
contract 1). Unknown arguments are refused so a typo cannot silently fall back to a default.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from jsonschema import Draft202012Validator

VLLM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "dtype": {"enum": ["auto", "float32", "float16", "bfloat16"]},
        "max_model_len": {"type": "integer", "minimum": 16},
        "tensor_parallel_size": {"type": "integer", "minimum": 1, "maximum": 64},
        "pipeline_parallel_size": {"type": "integer", "minimum": 1, "maximum": 64},
        "gpu_memory_utilization": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
        "enable_prefix_caching": {"type": "boolean"},
        "quantization": {
            "enum": [None, "awq", "gptq", "fp8", "bitsandbytes", "gguf", "compressed-tensors"]
        },
        "max_num_seqs": {"type": "integer", "minimum": 1},
        "max_num_batched_tokens": {"type": "integer", "minimum": 1},
        "enforce_eager": {"type": "boolean"},
        "cpu_kvcache_space_gib": {"type": "number", "exclusiveMinimum": 0},
        "seed": {"type": "integer", "minimum": 0},
        "task": {"enum": ["generate", "embed"]},
        # "priority": tenants' plans order the waiting queue (measured to cost throughput on
        # CPU: inference/serving/engines/vllm_engine.py); default "fcfs".
        "scheduling_policy": {"enum": ["fcfs", "priority"]},
        # vLLM's tool-call parser for the model's format (e.g. "hermes"); it turns on automatic
        # tool choice, without which vLLM refuses every tool_choice but "none".
        "tool_call_parser": {"type": "string", "pattern": "^[a-z0-9_]{1,64}$"},
    },
}

OPENAI_UPSTREAM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "timeout_s": {"type": "number", "exclusiveMinimum": 0, "maximum": 3600},
        "max_connections": {"type": "integer", "minimum": 1, "maximum": 10000},
    },
}

# The synthetic engine is a labelled test/benchmark engine: it produces deterministic tokens at a
# configured pace and is never presented as a model.
SYNTHETIC_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "ttft_ms": {"type": "number", "minimum": 0, "maximum": 60000},
        "tpot_ms": {"type": "number", "minimum": 0, "maximum": 60000},
        "default_max_tokens": {"type": "integer", "minimum": 1},
        # A simulated cold start (seconds the engine takes to start), for scale-to-zero tests.
        "start_delay_s": {"type": "number", "minimum": 0, "maximum": 600},
    },
}

# llama.cpp on a GGUF file (inference/serving/engines/llamacpp_engine.py). n_ctx is the KV
# cache's length (default 2048; at most the catalog's context_length); n_threads defaults to the
# replica's CPUs.
LLAMACPP_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "n_ctx": {"type": "integer", "minimum": 16},
        "n_threads": {"type": "integer", "minimum": 1, "maximum": 256},
        "n_batch": {"type": "integer", "minimum": 1, "maximum": 65536},
        "seed": {"type": "integer", "minimum": 0},
        "flash_attn": {"type": "boolean"},
    },
}

SCHEMAS: dict[str, dict[str, Any]] = {
    "vllm": VLLM_SCHEMA,
    "openai": OPENAI_UPSTREAM_SCHEMA,
    "synthetic": SYNTHETIC_SCHEMA,
    "llamacpp": LLAMACPP_SCHEMA,
}


def validate_engine_args(engine_kind: str, args: Any) -> None:
    """Raise ``ValidationError`` on ``engine_args`` naming each offending argument."""
    schema = SCHEMAS.get(engine_kind)
    if schema is None:
        raise ValidationError({"engine_kind": f"Unknown engine kind {engine_kind!r}."})
    messages = []
    for error in sorted(Draft202012Validator(schema).iter_errors(args), key=str):
        where = ".".join(str(part) for part in error.absolute_path) or "engine_args"
        messages.append(f"{where}: {error.message}")
    if messages:
        raise ValidationError({"engine_args": messages})
