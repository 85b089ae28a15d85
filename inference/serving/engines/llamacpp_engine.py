"""The ``llamacpp`` engine: a GGUF file served by llama.cpp in this process, through its Python
binding (``llama-cpp-python``), with no conversion (a Q4_1 GGUF runs as Q4_1).

What it covers of the OpenAI surface: chat completions (the prompt is rendered with the chat
template stored in the GGUF, by the binding's own ``Jinja2ChatFormatter``, as the binding's
``create_chat_completion`` would), completions (a string, token ids, or a list of either),
streaming, ``n``, ``max_tokens`` / ``max_completion_tokens``, ``temperature``, ``top_p``,
``stop``, ``seed``, ``presence_penalty``, ``frequency_penalty``, ``logit_bias`` and
``response_format`` (``json_object``, or ``json_schema``: sampling is constrained by a llama.cpp
grammar made from the schema). Sampling defaults are OpenAI's (temperature 1, top_p 1, no top-k
or min-p), not llama.cpp's. What it cannot do is refused with an OpenAI-shaped 400 naming the
parameter: ``tools``, ``logprobs``, ``echo``, ``suffix``, ``best_of``, image content, and the
embeddings endpoint.

Usage is the engine's own count, the same in a whole response and a stream: ``prompt_tokens``
is the length of the token sequence the model evaluated (the rendered chat template included),
``prompt_tokens_details.cached_tokens`` how many of them llama.cpp reused from its KV cache (the
prefix shared with the sequence before, as vLLM's prefix cache reports it);
``completion_tokens`` counts every token the model sampled, the end-of-sequence token included,
as vLLM counts them (so the same model bills alike on both engines). Stream chunks carry the
usage so far on every chunk (like vLLM's ``continuous_usage_stats``); the last chunk has no
choices and the final usage.

Concurrency: a ``llama_cpp.Llama`` is not thread-safe (one context, one KV cache). Every call
into it runs on ONE worker thread of this engine, one generation at a time, in arrival order;
other requests wait in that thread's queue (Ray Serve's ``max_ongoing_requests`` bounds how
many). The event loop stays free meanwhile: llama.cpp releases the GIL while it computes. To
serve more at once, run more replicas (``replica_cpus`` each) rather than more threads.

Cancellation: when the consumer goes away (the stream is closed, or the task awaiting a whole
response is cancelled: the gateway's timeout, a client that left), a flag is set that a stopping
criterion checks before every token, so the generation stops at the next token and the worker
moves on to the next request.

Context: ``n_ctx`` is the KV cache's length (default 2048; set it to the catalog's
``context_length``). A prompt that does not fit, or a prompt plus ``max_tokens`` that does not,
is a 400 ``context_length_exceeded``, as vLLM refuses it; without ``max_tokens`` a reply may use
the rest of the context.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inference.serving import errors, requests
from inference.serving.engines.base import Endpoint

logger = logging.getLogger(__name__)

DEFAULT_N_CTX = 2048
_KNOWN_ARGS = ("n_ctx", "n_threads", "n_batch", "seed", "flash_attn")
# OpenAI parameters this engine cannot honour, with the values that ask for nothing (accepted).
_UNSUPPORTED: dict[str, tuple[Any, ...]] = {
    "tools": (None, []),
    "functions": (None, []),
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "echo": (None, False),
    "suffix": (None, ""),
    "best_of": (None, 1),
}
_DONE = object()


@dataclass
class _Run:
    """One generation: a choice of one prompt."""

    index: int
    tokens: list[int]
    seed: int


@dataclass(eq=False)
class _Job:
    """A request as the worker thread runs it; ``cancel`` is set from the event loop."""

    endpoint: Endpoint
    body: dict[str, Any]
    emit: Callable[[Any], object]
    cancel: threading.Event = field(default_factory=threading.Event)
    prompt_tokens: int = 0
    cached_tokens: int = 0


class _TokenCounter:
    """A llama.cpp stopping criterion that counts sampled tokens and stops on cancellation.

    llama.cpp calls it once per sampled token with the sequence before that token (prompt plus
    earlier tokens), and once more after the loop with the evaluated sequence, which is as long
    as at the last call; so ``len(input_ids) - prompt + 1`` is the number sampled so far."""

    def __init__(self, prompt: int, cancel: threading.Event) -> None:
        self.prompt = prompt
        self.cancel = cancel
        self.sampled = 0

    def __call__(self, input_ids: Any, logits: Any) -> bool:
        self.sampled = max(self.sampled, len(input_ids) - self.prompt + 1)
        return self.cancel.is_set()


class LlamaCppEngine:
    """See the module docstring. ``model`` is the public name, ``path`` the GGUF file; ``cpus``
    is the replica's CPU share (the default thread count); the rest are the catalog's
    ``engine_args`` (``inference.engine_args.LLAMACPP_SCHEMA``)."""

    def __init__(
        self, *, model: str, path: str, cpus: float | None = None, **engine_args: Any
    ) -> None:
        unknown = set(engine_args) - set(_KNOWN_ARGS)
        if unknown:
            raise ValueError(f"unknown llama.cpp engine arguments: {sorted(unknown)}")
        self.model = model
        self.path = path
        self.n_ctx = int(engine_args.get("n_ctx") or DEFAULT_N_CTX)
        threads = engine_args.get("n_threads")
        if threads is None:
            threads = max(1, round(cpus)) if cpus else max(1, (os.cpu_count() or 2) // 2)
        self.n_threads = int(threads)
        self.n_batch = int(engine_args.get("n_batch") or 512)
        self.flash_attn = bool(engine_args.get("flash_attn", False))
        seed = engine_args.get("seed")
        # Requests without a seed draw one from this generator: a fixed engine seed makes the
        # sequence of draws reproducible (llama.cpp's own default reuses ONE seed for all).
        self.seeds = random.Random(seed)  # noqa: S311 - sampling seeds, not secrets
        self.llm: Any = None  # llama_cpp.Llama once started
        self.formatter: Any = None  # the GGUF's chat template, or None
        self.executor: ThreadPoolExecutor | None = None
        self.jobs: set[_Job] = set()  # submitted and not yet consumed to the end
        self.start_seconds: float | None = None
        self.active = 0
        self.cancelled = 0
        # Tokens sampled by this engine, all requests together (added when a generation ends):
        # how a test sees that a cancelled request stopped generating.
        self.generated = 0
        self.fingerprint = "llama.cpp"

    # --- lifecycle ---

    async def start(self) -> None:
        if not Path(self.path).is_file():
            raise FileNotFoundError(f"No GGUF file at {self.path}")
        started = time.perf_counter()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llamacpp")
        loop = asyncio.get_running_loop()
        self.llm, self.formatter = await loop.run_in_executor(self.executor, self._load)
        self.start_seconds = time.perf_counter() - started
        logger.info(
            "llama.cpp engine for %s started in %.1f s (%s, n_ctx %d, %d threads)",
            self.model,
            self.start_seconds,
            Path(self.path).name,
            self.n_ctx,
            self.n_threads,
        )

    def _load(self) -> tuple[Any, Any]:
        import llama_cpp
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self.fingerprint = f"llama.cpp-{llama_cpp.__version__}"
        llm = llama_cpp.Llama(
            model_path=self.path,
            n_ctx=self.n_ctx,
            n_threads=self.n_threads,
            n_threads_batch=self.n_threads,
            n_batch=self.n_batch,
            flash_attn=self.flash_attn,
            verbose=False,
        )
        template = llm.metadata.get("tokenizer.chat_template")
        formatter = None
        if template:
            eos, bos = llm.token_eos(), llm.token_bos()
            formatter = Jinja2ChatFormatter(
                template=template,
                eos_token=llm._model.token_get_text(eos) if eos != -1 else "",
                bos_token=llm._model.token_get_text(bos) if bos != -1 else "",
            )
        return llm, formatter

    async def check_health(self) -> None:
        if self.llm is None or self.executor is None:
            raise RuntimeError("the llama.cpp engine is not started")

    async def aclose(self) -> None:
        executor, llm = self.executor, self.llm
        self.executor, self.llm = None, None
        for job in list(self.jobs):
            job.cancel.set()
        if executor is not None:
            # Every job is cancelled: the running generation stops at its next token.
            await asyncio.to_thread(executor.shutdown, wait=True, cancel_futures=True)
        if llm is not None:
            llm.close()

    # --- requests ---

    async def complete(
        self, endpoint: Endpoint, body: dict[str, Any], *, priority: int = 0
    ) -> dict[str, Any]:
        """A whole response: the stream below, gathered (one code path for both)."""
        chat = endpoint == "chat.completions"
        texts: dict[int, list[str]] = {}
        finishes: dict[int, str | None] = {}
        usage: dict[str, int] = {}
        ident, created = "", 0
        async for chunk in self.stream(endpoint, body, priority=priority):
            ident, created, usage = chunk["id"], chunk["created"], chunk["usage"]
            for choice in chunk["choices"]:
                index = choice["index"]
                piece = choice["delta"].get("content") if chat else choice["text"]
                texts.setdefault(index, []).append(piece or "")
                if choice["finish_reason"] is not None:
                    finishes[index] = choice["finish_reason"]
        choices: list[dict[str, Any]] = []
        for index in sorted(texts):
            text = "".join(texts[index])
            answer: dict[str, Any] = (
                {"message": {"role": "assistant", "content": text}} if chat else {"text": text}
            )
            choices.append(
                {"index": index, **answer, "finish_reason": finishes.get(index), "logprobs": None}
            )
        return {
            "id": ident,
            "object": "chat.completion" if chat else "text_completion",
            "created": created,
            "model": self.model,
            "system_fingerprint": self.fingerprint,
            "choices": choices,
            "usage": usage,
        }

    async def stream(
        self, endpoint: Endpoint, body: dict[str, Any], *, priority: int = 0
    ) -> AsyncIterator[dict[str, Any]]:
        """Chunks as the worker thread produces them (module docstring); ``priority`` is
        ignored: requests run in arrival order."""
        if endpoint == "embeddings":
            raise errors.invalid(
                f"The model `{self.model}` serves text generation only (llama.cpp engine); it "
                "does not support the embeddings endpoint.",
                "model",
                "unsupported_endpoint",
            )
        self._validate(endpoint, body)
        if self.executor is None or self.llm is None:
            raise errors.unavailable("The model is not loaded yet.", "engine_not_ready")
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        job = _Job(
            endpoint,
            body,
            emit=lambda item: loop.call_soon_threadsafe(queue.put_nowait, item),
        )
        try:
            future = loop.run_in_executor(self.executor, self._work, job)
        except RuntimeError:  # the executor was shut down: the replica is stopping
            raise errors.unavailable("The model is stopping.", "engine_unavailable") from None
        self.jobs.add(job)
        future.add_done_callback(lambda _: queue.put_nowait(_DONE))
        # Retrieved here too, so a failure after the consumer left is not reported as lost.
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
        chat = endpoint == "chat.completions"
        ident = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        created = int(time.time())
        sampled = 0
        finished = False
        self.active += 1

        def chunk(choices: list[dict[str, Any]]) -> dict[str, Any]:
            return {
                "id": ident,
                "object": "chat.completion.chunk" if chat else "text_completion",
                "created": created,
                "model": self.model,
                "system_fingerprint": self.fingerprint,
                "choices": choices,
                "usage": {
                    "prompt_tokens": job.prompt_tokens,
                    "completion_tokens": sampled,
                    "total_tokens": job.prompt_tokens + sampled,
                    "prompt_tokens_details": {"cached_tokens": job.cached_tokens},
                },
            }

        try:
            started: set[int] = set()
            while True:
                item = await queue.get()
                if item is _DONE:
                    error = future.exception()
                    if error is not None:
                        raise _api_error(error)
                    break
                index, text, finish, count = item
                sampled = count
                if chat and index not in started:
                    started.add(index)
                    yield chunk([_choice(chat, index, None, role=True)])
                if text or finish is not None:
                    yield chunk([_choice(chat, index, text, finish=finish)])
            finished = True
            yield chunk([])
        finally:
            self.active -= 1
            self.jobs.discard(job)
            if not finished:
                # The consumer went away (or the request failed): stop generating for nobody.
                job.cancel.set()
                self.cancelled += 1

    # --- the worker thread (the only place that touches the Llama object) ---

    def _work(self, job: _Job) -> None:
        if job.cancel.is_set():
            return
        llm = self.llm
        if llm is None:
            raise errors.unavailable("The model is stopping.", "engine_unavailable")
        body = job.body
        prompts = self._prompts(job.endpoint, body)
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        for prompt in prompts:
            _check_context(job.endpoint, len(prompt), limit, self.n_ctx)
        job.prompt_tokens = sum(len(p) for p in prompts)
        n = int(body.get("n") or 1)
        seed = body.get("seed")
        runs = [
            _Run(
                index=p * n + c,
                tokens=tokens,
                seed=(int(seed) + c) % 2**32 if seed is not None else self.seeds.getrandbits(32),
            )
            for p, tokens in enumerate(prompts)
            for c in range(n)
        ]
        stops = _stops(body.get("stop"))
        if job.endpoint == "chat.completions" and self.formatter is not None:
            stops += [s for s in [self.formatter.eos_token] if s]
        logit_bias = body.get("logit_bias")
        sampled_before = 0
        from llama_cpp import StoppingCriteriaList

        grammar = _grammar(body.get("response_format"))

        for run in runs:
            if job.cancel.is_set():
                return
            counter = _TokenCounter(len(run.tokens), job.cancel)
            job.cached_tokens += _reused_prefix(llm, run.tokens)
            max_tokens = limit if limit is not None else self.n_ctx - len(run.tokens)
            pieces = llm.create_completion(
                prompt=run.tokens,
                max_tokens=int(max_tokens),
                temperature=float(_default(body.get("temperature"), 1.0)),
                top_p=float(_default(body.get("top_p"), 1.0)),
                top_k=0,
                min_p=0.0,
                repeat_penalty=1.0,
                presence_penalty=float(body.get("presence_penalty") or 0.0),
                frequency_penalty=float(body.get("frequency_penalty") or 0.0),
                stop=stops,
                seed=run.seed,
                stream=True,
                stopping_criteria=StoppingCriteriaList([counter]),
                grammar=grammar,
                logit_bias={int(k): float(v) for k, v in logit_bias.items()}
                if logit_bias
                else None,
            )
            try:
                for piece in pieces:
                    choice = piece["choices"][0]
                    job.emit(
                        (
                            run.index,
                            choice["text"],
                            choice["finish_reason"],
                            sampled_before + counter.sampled,
                        )
                    )
                    if job.cancel.is_set():
                        return
            finally:
                pieces.close()
                self.generated += counter.sampled
            sampled_before += counter.sampled

    def _prompts(self, endpoint: Endpoint, body: dict[str, Any]) -> list[list[int]]:
        """The token sequences to run: the rendered chat, or each completions prompt."""
        llm = self.llm
        if endpoint == "chat.completions":
            if self.formatter is None:
                raise errors.invalid(
                    f"The model `{self.model}` has no chat template in its GGUF file; use the "
                    "completions endpoint.",
                    "messages",
                    "unsupported_endpoint",
                )
            try:
                rendered = self.formatter(messages=_messages(body["messages"]))
            except errors.ApiError:
                raise
            except Exception as error:  # the template refused the conversation
                raise errors.invalid(
                    f"The model's chat template cannot render these messages: {error}",
                    "messages",
                ) from None
            text = rendered.prompt.encode("utf-8")
            return [llm.tokenize(text, add_bos=not rendered.added_special, special=True)]
        prompt = body.get("prompt")
        vocab = llm.n_vocab()
        if isinstance(prompt, str):
            items: list[Any] = [prompt]
        elif isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
            items = [prompt]
        elif isinstance(prompt, list) and prompt:
            items = prompt
        else:
            raise errors.invalid("'prompt' must not be empty.", "prompt")
        out = []
        for item in items:
            if isinstance(item, str):
                if not item:
                    raise errors.invalid("'prompt' must not be empty.", "prompt")
                out.append(llm.tokenize(item.encode("utf-8"), add_bos=True, special=True))
            elif (
                isinstance(item, list)
                and item
                and all(isinstance(t, int) and not isinstance(t, bool) for t in item)
            ):
                if not all(0 <= t < vocab for t in item):
                    raise errors.invalid(f"Token ids must be in [0, {vocab}).", "prompt")
                out.append(list(item))
            else:
                raise errors.invalid(
                    "'prompt' must be a string, a list of strings, or token ids.", "prompt"
                )
        return out

    def _validate(self, endpoint: Endpoint, body: dict[str, Any]) -> None:
        """The gateway's own checks (so a direct caller gets the same 400s), then what this
        engine cannot do."""
        requests.parse({**body, "model": body.get("model") or self.model}, endpoint)
        for param, accepted in _UNSUPPORTED.items():
            value = body.get(param)
            if not any(value is a or (type(value) is type(a) and value == a) for a in accepted):
                raise errors.invalid(
                    f"The llama.cpp engine does not support '{param}'.",
                    param,
                    "unsupported_parameter",
                )
        _json_schema(body.get("response_format"))  # a 400 unless text, json_object, json_schema
        bias = body.get("logit_bias")
        if bias is not None and (
            not isinstance(bias, dict)
            or not all(str(k).isdigit() and _is_number(v) for k, v in bias.items())
        ):
            raise errors.invalid(
                "'logit_bias' must map token ids to numbers between -100 and 100.", "logit_bias"
            )


# --- helpers (module level: no engine state) ---


def _json_schema(response_format: Any) -> dict[str, Any] | None:
    """The JSON Schema a ``response_format`` asks for: ``{}`` for ``json_object`` (any JSON
    object), ``None`` for text; anything else is a 400."""
    if response_format is None:
        return None
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {}
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if isinstance(schema, dict):
            return schema
        raise errors.invalid(
            "response_format.json_schema.schema must be a JSON Schema object.", "response_format"
        )
    raise errors.invalid(
        "response_format must be of type 'text', 'json_object' or 'json_schema'.",
        "response_format",
    )


def _grammar(response_format: Any) -> Any:
    """The llama.cpp grammar that constrains sampling to ``response_format`` (None: free)."""
    schema = _json_schema(response_format)
    if schema is None:
        return None
    from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar

    try:
        if not schema:
            return LlamaGrammar.from_string(JSON_GBNF, verbose=False)
        return LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)
    except Exception as error:  # a schema the converter does not support
        raise errors.invalid(
            f"The llama.cpp engine cannot constrain output to this JSON schema: {error}",
            "response_format",
        ) from None


def _reused_prefix(llm: Any, tokens: list[int]) -> int:
    """How many of ``tokens`` llama.cpp will not evaluate again: its KV cache still holds the
    previous sequence, and ``Llama.generate`` keeps the longest common prefix of that sequence
    and the prompt less its last token (the same comparison, made just before it)."""
    reused = 0
    for held, wanted in zip(llm._input_ids.tolist(), tokens[:-1], strict=False):
        if held != wanted:
            break
        reused += 1
    return reused


def _default(value: Any, default: float) -> Any:
    return default if value is None else value


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and -100 <= value <= 100


def _stops(stop: Any) -> list[str]:
    if stop is None:
        return []
    return [stop] if isinstance(stop, str) else list(stop)


def _messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages as a chat template expects them: ``content`` a string (text parts joined)."""
    out = []
    for index, message in enumerate(messages):
        content = message.get("content")
        if isinstance(content, list):
            texts = []
            for part in content:
                if not isinstance(part, dict) or part.get("type") != "text":
                    raise errors.invalid(
                        "The llama.cpp engine accepts text content only.",
                        f"messages[{index}].content",
                        "unsupported_content",
                    )
                texts.append(str(part.get("text") or ""))
            content = "".join(texts)
        if message.get("tool_calls"):
            raise errors.invalid(
                "The llama.cpp engine does not support tool calls.",
                f"messages[{index}].tool_calls",
                "unsupported_parameter",
            )
        out.append({**message, "content": "" if content is None else str(content)})
    return out


def _check_context(endpoint: Endpoint, prompt: int, limit: int | None, n_ctx: int) -> None:
    """A prompt (plus the asked completion) longer than the context: a 400, as vLLM words it."""
    param = "messages" if endpoint == "chat.completions" else "prompt"
    what = "messages" if endpoint == "chat.completions" else "prompt"
    if prompt >= n_ctx:
        raise errors.invalid(
            f"This model's maximum context length is {n_ctx} tokens. However, your {what} "
            f"resulted in {prompt} tokens. Please reduce the length of the {what}.",
            param,
            "context_length_exceeded",
        )
    if limit is not None and prompt + limit > n_ctx:
        raise errors.invalid(
            f"This model's maximum context length is {n_ctx} tokens. However, you requested "
            f"{prompt + limit} tokens ({prompt} in the {what}, {limit} in the completion). "
            f"Please reduce the length of the {what} or completion.",
            param,
            "context_length_exceeded",
        )


def _choice(
    chat: bool,
    index: int,
    text: str | None,
    *,
    finish: str | None = None,
    role: bool = False,
) -> dict[str, Any]:
    if chat:
        delta: dict[str, Any] = (
            {"role": "assistant", "content": ""} if role else ({"content": text} if text else {})
        )
        return {"index": index, "delta": delta, "finish_reason": finish, "logprobs": None}
    return {"index": index, "text": text or "", "finish_reason": finish, "logprobs": None}


def _api_error(error: BaseException) -> errors.ApiError:
    if isinstance(error, errors.ApiError):
        return error
    logger.error("llama.cpp request failed", exc_info=error)
    return errors.ApiError(
        500, "The llama.cpp engine failed on this request.", "server_error", None, "engine_error"
    )
