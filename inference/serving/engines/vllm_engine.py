"""The ``vllm`` engine: vLLM's async engine running in this process, behind vLLM's own OpenAI
serving layer.

Nothing of the OpenAI surface is re-implemented here. The engine is built the way ``vllm serve``
builds it: vLLM's own argument parser gives every frontend default, ``AsyncLLM`` runs the model
(its engine core is a child process), and vLLM's ``init_app_state`` wires the same serving
objects the vLLM HTTP server uses (``OpenAIServingChat``, ``OpenAIServingCompletion``,
``ServingEmbedding``, ``OpenAIServingModels``, the renderer). So chat templates, tools and
``tool_choice``, ``response_format`` (JSON schema), logprobs, ``n``, ``stop``, ``seed``,
penalties, completions over a list of prompts and embeddings behave exactly as in vLLM.

What this module adds is the seam to the ``Engine`` protocol (``base.py``):

- a request body (a dict) is validated into vLLM's request model; vLLM's ``ErrorResponse`` and
  the exceptions its HTTP layer would turn into one become our ``ApiError`` (same status, an
  OpenAI-shaped body), so a 400 from vLLM reaches the client as a 400;
- streams: vLLM's SSE strings are parsed back to dicts; usage is always requested
  (``include_usage`` + ``continuous_usage_stats``) so every chunk carries the counts so far;
- cancellation: when the consumer stops (the generator is closed or its task cancelled), the
  vLLM request is aborted by its id, so the engine stops generating for nobody;
- the request id sent to vLLM is ours (``vl-<hex>``), never the client's ``request_id``.

Priority: with the engine argument ``scheduling_policy: "priority"`` every request carries the
organisation's plan priority (``tenants/plans.py``; lower is served first, arrival order among
equals). vLLM orders its waiting queue by it, so under load a premium tenant's request starts
before a free tenant's that arrived earlier; running requests are not preempted for it (only
when the KV cache runs out, and then the lowest priority goes first). It is opt-in per model
because it costs throughput: SmolLM2 on 2 CPU cores at 32 clients served 0.92 of ``vllm
serve``'s tokens/s with it and 0.99 with the default ``"fcfs"`` (bench/results/
vllm_vs_gateway*.json). With ``"fcfs"`` the plan's priority is not sent (vLLM refuses a non-zero
one).

vLLM spawns processes: scripts that start this engine need the ``if __name__ == "__main__"``
guard.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator
from http import HTTPStatus
from typing import Any

from inference.serving import errors
from inference.serving.engines.base import Endpoint

logger = logging.getLogger(__name__)

GiB = 1 << 30

# Our engine arguments (``inference.engine_args.VLLM_SCHEMA``) that are vLLM ``AsyncEngineArgs``
# fields of the same name. ``cpu_kvcache_space_gib`` and ``task`` are translated below.
_SAME_NAME_ARGS = (
    "dtype",
    "max_model_len",
    "tensor_parallel_size",
    "pipeline_parallel_size",
    "gpu_memory_utilization",
    "enable_prefix_caching",
    "quantization",
    "max_num_seqs",
    "max_num_batched_tokens",
    "enforce_eager",
    "seed",
)
_TASKS = ("generate", "embed")
# vLLM frontend options, per model (``tool_call_parser`` is in VLLM_SCHEMA).
# In vLLM 0.32 any tool_choice but "none" (named and "required" included) needs a tool call
# parser AND auto tool choice enabled; so ``tool_call_parser`` (e.g. "hermes") turns on
# ``enable_auto_tool_choice`` unless that is given as False. Without one, tools are refused (400).
DEFAULT_CPU_KVCACHE_GIB = 2.0
_FRONTEND_ARGS = ("tool_call_parser", "enable_auto_tool_choice")


def _on_cpu() -> bool:
    from vllm.platforms import current_platform

    return bool(current_platform.is_cpu())


class VLLMEngine:
    """See the module docstring. ``model`` is the public name the model is served under,
    ``path`` the Hugging Face folder; the rest are the catalog's ``engine_args``."""

    def __init__(self, *, model: str, path: str, **engine_args: Any) -> None:
        known = {
            *_SAME_NAME_ARGS,
            *_FRONTEND_ARGS,
            "cpu_kvcache_space_gib",
            "task",
            "scheduling_policy",
        }
        unknown = set(engine_args) - known
        if unknown:
            raise ValueError(f"unknown vLLM engine arguments: {sorted(unknown)}")
        task = engine_args.get("task") or "generate"
        if task not in _TASKS:
            raise ValueError(f"task must be one of {_TASKS}, not {task!r}")
        self.model = model
        self.path = path
        self.task: str = task
        self.scheduling_policy: str = engine_args.get("scheduling_policy") or "fcfs"
        if self.scheduling_policy not in ("fcfs", "priority"):
            raise ValueError("scheduling_policy must be 'fcfs' or 'priority'")
        self.engine_args = dict(engine_args)
        self.engine: Any = None  # vllm.v1.engine.async_llm.AsyncLLM once started
        self.state: Any = None  # starlette State holding vLLM's serving objects
        self.start_seconds: float | None = None
        self.active = 0
        self.cancelled = 0

    # --- lifecycle ---

    def _cli_args(self) -> Any:
        """vLLM's own ``serve`` argument namespace (all frontend defaults), with ours applied."""
        from vllm.entrypoints.launchers.cli_args import (
            make_arg_parser,
            validate_parsed_serve_args,
        )
        from vllm.utils.argparse_utils import FlexibleArgumentParser

        parser_cls: Any = FlexibleArgumentParser  # (untyped constructor)
        args = make_arg_parser(parser_cls()).parse_args([])
        args.model = self.path
        args.served_model_name = [self.model]
        # Stats on: vLLM's PrometheusStatLogger records vllm:num_requests_running/_waiting,
        # vllm:kv_cache_usage_perc, vllm:time_to_first_token_seconds, vllm:generation_tokens …
        # in this replica's process. The Ray cluster sets PROMETHEUS_MULTIPROC_DIR, so they land
        # in the node's multiprocess files and the gateway's /metrics serves them with its own
        # (inference/serving/metrics.py). vLLM's periodic log line needs its HTTP server's loop,
        # which is not run here, so nothing is logged.
        args.disable_log_stats = False
        args.enable_log_requests = False
        on_cpu = _on_cpu()
        if on_cpu:
            # float32: CPUs without native bf16 run it several times slower (DESIGN.md);
            # eager: CUDA graphs / torch.compile do not apply.
            args.dtype = "float32"
            args.enforce_eager = True
        for name in (*_SAME_NAME_ARGS, *_FRONTEND_ARGS):
            if self.engine_args.get(name) is not None:
                setattr(args, name, self.engine_args[name])
        space = self.engine_args.get("cpu_kvcache_space_gib")
        if space is None and on_cpu and self.engine_args.get("gpu_memory_utilization") is None:
            # On CPU, vLLM otherwise reserves 92% of the NUMA node's memory and refuses to start
            # when that much is not free (always, beside Ray and other replicas): size the KV
            # cache instead, which the catalog can raise.
            space = DEFAULT_CPU_KVCACHE_GIB
        if space is not None:
            # What vLLM's CPU platform does with the legacy VLLM_CPU_KVCACHE_SPACE (whole GiB
            # only, and process-wide): set the KV cache size, here per engine and fractional.
            args.kv_cache_memory_bytes = math.ceil(float(space) * GiB)
        # Tenants' plans order the waiting queue only where the catalog asks (module docstring).
        args.scheduling_policy = self.scheduling_policy
        # Report cached prompt tokens (prefix-cache hits) in usage, so they are metered.
        args.enable_prompt_tokens_details = True
        if args.tool_call_parser and self.engine_args.get("enable_auto_tool_choice") is None:
            args.enable_auto_tool_choice = True
        validate_parsed_serve_args(args)
        if self.task == "embed":
            args.runner = "pooling"
            args.convert = "embed"
        else:
            args.runner = "generate"
        return args

    async def start(self) -> None:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.entrypoints.launchers.api_server.app_state import init_app_state
        from vllm.usage.usage_lib import UsageContext
        from vllm.v1.engine.async_llm import AsyncLLM

        started = time.perf_counter()
        args = self._cli_args()
        engine_args = AsyncEngineArgs.from_cli_args(args)
        # Loading takes tens of seconds: keep this event loop (health checks) responsive.
        self.engine = await asyncio.to_thread(
            AsyncLLM.from_engine_args, engine_args, usage_context=UsageContext.OPENAI_API_SERVER
        )
        try:
            from starlette.datastructures import State

            state = State()
            supported = await self.engine.get_supported_tasks()
            await init_app_state(self.engine, state, args, supported)
            self.state = state
        except BaseException:
            self.engine.shutdown()
            self.engine = None
            raise
        self.start_seconds = time.perf_counter() - started
        logger.info("vLLM engine for %s started in %.1f s", self.model, self.start_seconds)

    async def check_health(self) -> None:
        if self.engine is None:
            raise RuntimeError("the vLLM engine is not started")
        if self.engine.errored:
            raise RuntimeError(f"the vLLM engine is dead: {self.engine.dead_error}")
        await self.engine.check_health()

    async def aclose(self) -> None:
        engine, self.engine, self.state = self.engine, None, None
        if engine is not None:
            engine.shutdown()
            del engine
            # vLLM's serving objects and the engine refer to each other: collect them now,
            # while the interpreter is whole (AsyncLLM.__del__ shuts down again).
            gc.collect()

    def num_unfinished_requests(self) -> int:
        """Requests the engine still holds (running or waiting); 0 when idle."""
        return int(self.engine.get_num_unfinished_requests()) if self.engine else 0

    # --- requests ---

    def _handler(self, endpoint: Endpoint) -> Any:
        if self.state is None:
            raise errors.unavailable("The model is not loaded yet.", "engine_not_ready")
        name = {
            "chat.completions": "openai_serving_chat",
            "completions": "openai_serving_completion",
            "embeddings": "serving_embedding",
        }[endpoint]
        handler = getattr(self.state, name, None)
        if handler is None:
            what = "embeddings" if self.task == "embed" else "text generation"
            raise errors.invalid(
                f"The model `{self.model}` serves {what} only; it does not support "
                f"the {endpoint} endpoint.",
                "model",
                "unsupported_endpoint",
            )
        return handler

    def _request(
        self, endpoint: Endpoint, body: dict[str, Any], *, stream: bool, priority: int
    ) -> Any:
        """vLLM's request model for ``body``; pydantic errors become a 400 like vLLM's.
        ``priority`` is the platform's (the organisation's plan): a client's own is replaced."""
        from pydantic import ValidationError

        data = dict(body, model=self.model, request_id=f"vl-{uuid.uuid4().hex}")
        data.pop("priority", None)
        if self.scheduling_policy == "priority":
            data["priority"] = priority
        if endpoint == "embeddings":
            data.pop("stream", None)
            data.pop("stream_options", None)
            if data.get("encoding_format") not in (None, "float", "base64"):
                raise errors.invalid(
                    "encoding_format must be 'float' or 'base64'.", "encoding_format"
                )
        else:
            data["stream"] = stream
            if stream:
                # Usage on every chunk and a final usage chunk: the engine's own counts.
                options = dict(data.get("stream_options") or {})
                options.update(include_usage=True, continuous_usage_stats=True)
                data["stream_options"] = options
            else:
                data.pop("stream_options", None)
        try:
            return _request_model(endpoint).model_validate(data)
        except ValidationError as error:
            raise _validation_error(error) from None

    async def _create(self, endpoint: Endpoint, request: Any) -> Any:
        """Hand a validated request to vLLM's serving handler for ``endpoint``; vLLM's own
        exceptions come back as OpenAI-shaped ``ApiError``s."""
        handler = self._handler(endpoint)
        try:
            if endpoint == "embeddings":
                return _decode_response(await handler(request, None))
            if endpoint == "chat.completions":
                return await handler.create_chat_completion(request, None)
            return await handler.create_completion(request, None)
        except errors.ApiError:
            raise
        except Exception as error:
            raise _from_exception(error) from error

    async def complete(
        self, endpoint: Endpoint, body: dict[str, Any], *, priority: int = 0
    ) -> dict[str, Any]:
        request = self._request(endpoint, body, stream=False, priority=priority)
        result = await self._create(endpoint, request)
        return result if endpoint == "embeddings" else _result_dict(result)

    async def stream(
        self, endpoint: Endpoint, body: dict[str, Any], *, priority: int = 0
    ) -> AsyncIterator[dict[str, Any]]:
        if endpoint == "embeddings":
            raise errors.invalid("Embeddings cannot be streamed.", "stream")
        request = self._request(endpoint, body, stream=True, priority=priority)
        result = await self._create(endpoint, request)
        if not hasattr(result, "__aiter__"):
            _result_dict(result)  # an ErrorResponse raises here
            raise errors.ApiError(500, "vLLM did not stream.", "server_error")
        finished = False
        self.active += 1
        try:
            async for event in result:
                for chunk in _parse_sse(event):
                    if chunk is None:
                        finished = True
                        continue
                    if "error" in chunk and "choices" not in chunk:
                        raise _from_error_body(chunk["error"])
                    yield chunk
            finished = True
        finally:
            self.active -= 1
            if not finished:
                # The consumer went away (closed us or cancelled its task): stop the work.
                self.cancelled += 1
                await self._abort(result, endpoint, request)

    async def _abort(self, sse: Any, endpoint: Endpoint, request: Any) -> None:
        """Close vLLM's stream and abort its engine requests. Closing the SSE generator alone
        does not reach the engine's per-request generators (they are suspended inside it), so
        abort by id: vLLM names them ``chatcmpl-<id>`` and ``cmpl-<id>-<prompt index>``."""
        try:
            await sse.aclose()
        except Exception:  # already closed or failing: the abort below still runs
            logger.debug("closing a vLLM stream failed", exc_info=True)
        if self.engine is None:
            return
        base = request.request_id
        if endpoint == "chat.completions":
            ids = [f"chatcmpl-{base}"]
        else:
            ids = [f"cmpl-{base}-{i}" for i in range(_prompt_count(request.prompt))]
        await asyncio.shield(self.engine.abort(ids))


# --- helpers (module level: no engine state) ---


def _request_model(endpoint: Endpoint) -> Any:
    if endpoint == "chat.completions":
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

        return ChatCompletionRequest
    if endpoint == "completions":
        from vllm.entrypoints.openai.completion.protocol import CompletionRequest

        return CompletionRequest
    return _EmbeddingAdapter()


class _EmbeddingAdapter:
    """``EmbeddingRequest`` is a union type, not a model: validate it through a TypeAdapter."""

    _adapter: Any = None

    def model_validate(self, data: dict[str, Any]) -> Any:
        if _EmbeddingAdapter._adapter is None:
            from pydantic import TypeAdapter
            from vllm.entrypoints.pooling.embed.protocol import EmbeddingRequest

            _EmbeddingAdapter._adapter = TypeAdapter(EmbeddingRequest)
        return _EmbeddingAdapter._adapter.validate_python(data)


def _prompt_count(prompt: Any) -> int:
    """How many prompts a completions ``prompt`` holds (one engine request each)."""
    if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
        return len(prompt)
    return 1


def _parse_sse(event: str) -> list[dict[str, Any] | None]:
    """The JSON payloads of one or more ``data: ...`` events; ``None`` for ``[DONE]``."""
    out: list[dict[str, Any] | None] = []
    for block in event.split("\n\n"):
        for line in block.splitlines():
            if not line.startswith("data:"):
                continue  # comments / keep-alives
            data = line[5:].strip()
            out.append(None if data == "[DONE]" else json.loads(data))
    return out


def _result_dict(result: Any) -> dict[str, Any]:
    from vllm.entrypoints.serve.engine.protocol import ErrorResponse

    if isinstance(result, ErrorResponse):
        raise _from_error_body(result.error.model_dump())
    dumped: dict[str, Any] = result.model_dump(mode="json", exclude_none=False)
    return dumped


def _decode_response(response: Any) -> dict[str, Any]:
    """A starlette ``JSONResponse`` (what vLLM's pooling handlers return) back to a dict."""
    body = json.loads(bytes(response.body))
    if response.status_code >= 400 or "error" in body:
        raise _from_error_body(body.get("error") or {"code": response.status_code})
    result: dict[str, Any] = body
    return result


def _api_error(status: int, message: str, param: str | None) -> errors.ApiError:
    if status == HTTPStatus.SERVICE_UNAVAILABLE:
        return errors.unavailable(message, "engine_unavailable")
    if status >= 500:
        return errors.ApiError(status, message, "server_error", None, "engine_error")
    return errors.ApiError(status, message, "invalid_request_error", param, None)


def _from_error_body(error: dict[str, Any]) -> errors.ApiError:
    """vLLM's ``ErrorInfo`` (``message``, ``type``, ``param``, ``code`` = the HTTP status)."""
    code = error.get("code")
    status = int(str(code)) if str(code).isdigit() else 500
    return _api_error(status, str(error.get("message") or "Engine error."), error.get("param"))


def _from_exception(error: Exception) -> errors.ApiError:
    """What vLLM's HTTP exception handlers would answer for ``error``."""
    from vllm.entrypoints.serve.exception_handling.error_response import (
        create_error_response,
    )

    api_error = _from_error_body(create_error_response(error).error.model_dump())
    if api_error.status >= 500:
        logger.error("vLLM request failed", exc_info=error)
    return api_error


def _validation_error(error: Any) -> errors.ApiError:
    """A pydantic ``ValidationError`` as vLLM's validation handler words it: a 400 naming the
    parameter."""
    from vllm.entrypoints.serve.exception_handling.handlers.validation import (
        clean_loc_for_param,
    )
    from vllm.exceptions import VLLMValidationError

    details = error.errors(include_url=False, include_input=False)
    param = None
    for detail in details:
        cause = (detail.get("ctx") or {}).get("error")
        if isinstance(cause, VLLMValidationError):
            param = cause.parameter
            break
    if param is None and details and details[0].get("loc"):
        param = clean_loc_for_param(tuple(details[0]["loc"]))
    lines = []
    for detail in details[:10]:
        where = clean_loc_for_param(tuple(detail.get("loc") or ())) or "body"
        lines.append(f"{where}: {detail.get('msg')}")
    return errors.invalid("; ".join(lines) or "Invalid request.", param)
