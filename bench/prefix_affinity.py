"""Prefix-cache affinity against Serve's default router, side by side, on a real model.

Two model applications of the same model (SmolLM2-135M-Instruct, the demo model, on the vLLM
CPU engine with prefix caching on), two replicas each, behind one Vlinders gateway: one routed
by Serve's default (power of two choices over queue lengths), one with ``request_router:
prefix_affinity`` (``inference/serving/routers.py``). Both take the same requests, one policy
after the other, then again in the other order (default, affinity, affinity, default), so each
ratio is measured under the same machine load.

The load: ``--prefixes`` long system prompts (``--prefix-tokens`` tokens each, sharing nothing),
each request one of them (a seeded random sequence, the same for both policies) and a short
distinct question, streamed, ``--tokens`` output tokens; ``--concurrency`` clients. Each
replica's KV cache (``--kv-gib``) holds about half of the prompts: a replica that sees every
prompt (the default router) keeps evicting them; with affinity each prompt stays on one
replica, whose cache holds its half. Per policy: time to first token p50/p99, requests/s, and
the prefix-cache hit rate (prompt tokens vLLM reported as cached / all prompt tokens).

    .venv/bin/python bench/prefix_affinity.py [--requests 40] [--rounds 2] [--concurrency 4]

Prints a table and writes bench/results/prefix_affinity.json. Needs the local Redis. Starts its
own Ray cluster: run it under ``flock /tmp/vl_ray.lock`` on a shared machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import common

POLICIES = {"default": "smollm2-default", "prefix_affinity": "smollm2-affinity"}
MAX_MODEL_LEN = 2048
WORDS = [
    "archive",
    "ledger",
    "harbour",
    "lantern",
    "meadow",
    "orchard",
    "quarry",
    "river",
    "signal",
    "timber",
    "valley",
    "willow",
    "beacon",
    "canal",
    "dune",
    "ember",
    "fjord",
    "glacier",
    "hollow",
    "inlet",
    "jetty",
    "kiln",
    "lagoon",
    "marsh",
]


def prefixes(path: Path, count: int, tokens: int) -> list[str]:
    """``count`` system prompts of ``tokens`` tokens each (the model's tokenizer), which differ
    from their first words on."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    out = []
    for k in range(count):
        rng = random.Random(k)  # noqa: S311 (repeatable filler, not a secret)
        text = f"Profile {k}: you are assistant number {k} of the {WORDS[k % len(WORDS)]} desk."
        while len(tokenizer(text)["input_ids"]) < tokens:
            text += " " + " ".join(rng.choice(WORDS) for _ in range(40)) + "."
        ids = tokenizer(text)["input_ids"][:tokens]
        out.append(tokenizer.decode(ids))
    return out


def model_spec(name: str, path: Path, router: str, kv_gib: float, seqs: int) -> dict[str, Any]:
    return common.vllm_model(
        name,
        path,
        max_model_len=MAX_MODEL_LEN,
        max_num_seqs=seqs,
        kv_cache_gib=kv_gib,
        engine_args={"enable_prefix_caching": True},
        target_ongoing_requests=seqs,
        # Four replicas (two per policy) and the gateway within 4 logical CPUs: only one
        # policy's pair is busy at a time.
        replicas=2,
        num_cpus=0.5,
        request_router=router,
    )


def serve_config(
    port: int, prefix: str, queue: str, spool: str, models: list[dict[str, Any]]
) -> dict[str, Any]:
    from inference.deployment import render_serve_config

    spec = common.deployment_spec(prefix, queue, spool, models, revision="bench-prefix-affinity")
    return render_serve_config(spec, host="127.0.0.1", port=port)


async def load(
    base_url: str,
    key: str,
    model: str,
    prompts: list[tuple[str, str]],
    concurrency: int,
    tokens: int,
) -> dict[str, Any]:
    """Every (system prompt, question) of ``prompts``, streamed by ``concurrency`` clients."""
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=600)
    ttfts: list[float] = []
    prompt_tokens = cached_tokens = failures = 0
    queue = list(prompts)

    async def one(system: str, question: str) -> None:
        nonlocal prompt_tokens, cached_tokens, failures
        start = time.perf_counter()
        first = None
        usage = None
        try:
            stream = await client.chat.completions.create(
                model=model,
                messages=[
                    {"role": "system", "content": system},
                    {"role": "user", "content": question},
                ],
                max_tokens=tokens,
                temperature=0,
                stream=True,
                stream_options={"include_usage": True},
                extra_body={"ignore_eos": True},
            )
            async for chunk in stream:
                if first is None and chunk.choices and chunk.choices[0].delta.content:
                    first = time.perf_counter()
                if chunk.usage is not None:
                    usage = chunk.usage
        except Exception as error:
            print(f"  failed: {error!r}", flush=True)
            failures += 1
            return
        if first is None or usage is None:
            failures += 1
            return
        ttfts.append(first - start)
        prompt_tokens += usage.prompt_tokens
        details = usage.prompt_tokens_details
        cached_tokens += (details.cached_tokens or 0) if details is not None else 0

    wall = await common.drive(lambda: one(*queue.pop(0)), concurrency, len(queue))
    await client.close()
    return {
        "requests": len(prompts),
        "failures": failures,
        "wall_s": wall,
        "ttfts_s": ttfts,
        "prompt_tokens": prompt_tokens,
        "cached_tokens": cached_tokens,
    }


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ttfts = [t for run in runs for t in run["ttfts_s"]]
    done = sum(run["requests"] - run["failures"] for run in runs)
    prompt = sum(run["prompt_tokens"] for run in runs)
    return {
        "requests": sum(run["requests"] for run in runs),
        "failures": sum(run["failures"] for run in runs),
        "ttft_p50_ms": statistics.median(ttfts) * 1000 if ttfts else None,
        "ttft_p99_ms": common.percentile_ms(ttfts, 0.99),
        "req_s": done / sum(run["wall_s"] for run in runs),
        "cache_hit_rate": sum(run["cached_tokens"] for run in runs) / prompt if prompt else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=40, help="per policy and round")
    parser.add_argument("--rounds", type=int, default=2, help="alternations (each runs both)")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--prefixes", type=int, default=8, help="distinct system prompts")
    parser.add_argument("--prefix-tokens", type=int, default=1500)
    parser.add_argument("--tokens", type=int, default=8, help="output tokens per request")
    parser.add_argument("--kv-gib", type=float, default=0.3, help="KV cache per replica")
    parser.add_argument("--max-num-seqs", type=int, default=4)
    args = parser.parse_args()

    workdir, prefix, queue = common.fresh_names("affinity")
    catalog = {"engine_kind": "vllm", "source_path": "-", "context_length": MAX_MODEL_LEN}
    key = common.setup_control_plane(workdir, prefix, model=POLICIES["default"], catalog=catalog)
    from inference.models import CatalogModel
    from tenants import snapshot
    from tenants.models import Organization
    from tests.ray_fixtures import free_port

    CatalogModel.objects.create(name=POLICIES["prefix_affinity"], **catalog)
    snapshot.publish_organizations(Organization.objects.all())

    path = common.smollm2_path()
    systems = prefixes(path, args.prefixes, args.prefix_tokens)
    rng = random.Random(13)  # noqa: S311 (the same sequence for both policies)
    rounds = [
        [
            (rng.choice(systems), f"Question {r}.{i}: what is item {i} of the list about?")
            for i in range(args.requests)
        ]
        for r in range(args.rounds)
    ]

    port = free_port()
    cluster = common.local_ray(workdir)
    base_url = f"http://127.0.0.1:{port}/v1"
    runs: dict[str, list[dict[str, Any]]] = {policy: [] for policy in POLICIES}
    began = time.perf_counter()
    try:
        models = [
            model_spec(name, path, policy, args.kv_gib, args.max_num_seqs)
            for policy, name in POLICIES.items()
        ]
        config = serve_config(port, prefix, queue, f"{workdir}/spool", models)
        common.start_serve(cluster, config, f"{workdir}/ray.log", timeout=900)
        print(f"deployed in {time.perf_counter() - began:.0f} s", flush=True)
        for round_, policy in common.alternating(list(POLICIES), args.rounds):
            prompts = rounds[round_]
            result = asyncio.run(
                load(base_url, key, POLICIES[policy], prompts, args.concurrency, args.tokens)
            )
            runs[policy].append(result)
            brief = summarise([result])
            print(f"round {round_ + 1} {policy}: {json.dumps(brief)}", flush=True)
    finally:
        cluster.stop()
        common.clean_redis(prefix, queue)

    table = {policy: summarise(measured) for policy, measured in runs.items()}
    base, cand = table["default"], table["prefix_affinity"]
    ratios = {
        "ttft_p50": cand["ttft_p50_ms"] / base["ttft_p50_ms"],
        "ttft_p99": cand["ttft_p99_ms"] / base["ttft_p99_ms"],
        "req_s": cand["req_s"] / base["req_s"],
    }
    print()
    print(
        f"SmolLM2-135M on vLLM CPU, 2 replicas per policy, {args.prefixes} system prompts of "
        f"{args.prefix_tokens} tokens, {args.tokens} output tokens, {args.concurrency} clients, "
        f"{args.requests * args.rounds} requests per policy"
    )
    print()
    header = ["router", "TTFT p50", "TTFT p99", "req/s", "prefix-cache hits", "failures"]
    cells = [
        [
            policy,
            f"{row['ttft_p50_ms']:.0f} ms",
            f"{row['ttft_p99_ms']:.0f} ms",
            f"{row['req_s']:.2f}",
            f"{row['cache_hit_rate']:.0%}",
            row["failures"],
        ]
        for policy, row in table.items()
    ]
    print(common.markdown_table(header, cells, "lrrrrr"))
    print(
        f"\naffinity/default: TTFT p50 {ratios['ttft_p50']:.2f}x, p99 {ratios['ttft_p99']:.2f}x, "
        f"req/s {ratios['req_s']:.2f}x"
    )
    out = {
        **common.run_header("prefix_affinity"),
        "model": "SmolLM2-135M-Instruct (float32, eager, vLLM CPU 0.32.0, prefix caching)",
        "settings": vars(args),
        "results": table,
        "affinity_over_default": ratios,
        "runs": {
            policy: [{k: v for k, v in run.items() if k != "ttfts_s"} for run in measured]
            for policy, measured in runs.items()
        },
    }
    common.write_results(out, common.RESULTS / "prefix_affinity.json")
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":  # vLLM spawns processes: the guard is required
    main()
