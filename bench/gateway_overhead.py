"""Gateway overhead: the full Vlinders gateway against a bare Ray Serve ingress, side by side.

Both call the same ModelServer on the synthetic engine (a labelled test engine, not a model: it
answers at once with 16 filler tokens), so the difference is what the gateway adds:
authentication from the access snapshot, limit reservation and settlement in Redis (with limits
set, so every check runs), usage events to the broker, metrics. Each concurrency level runs both
targets in one run, alternating, so the ratio is measured under the same machine load.

    .venv/bin/python bench/gateway_overhead.py [--requests 2000] [--concurrency 1,32,128]
    .venv/bin/python bench/gateway_overhead.py --concurrency 1,32,128,512,1000  # the big levels
    .venv/bin/python bench/gateway_overhead.py --serve-modes   # HAProxy mode vs default proxy
    .venv/bin/python bench/gateway_overhead.py --profile /tmp/gw.svg  # py-spy of the gateway

CPU per request is measured next to req/s and latency: the CPU time (user + system) of every
process of the Ray cluster (its session: raylet, proxy or HAProxy, the replicas, GCS,
dashboard) plus the Redis server's, as a delta over each run divided by its requests. Runs
alternate and never overlap, so each delta belongs to one target; what idles in the
background (GCS, the dashboard, the other application's replicas) is counted in both.

Prints a table and writes bench/results/gateway_overhead.json (serve_modes.json with
--serve-modes, which checks the choice of Serve's high-throughput mode). Needs the local Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from common import (
    RESULTS,
    ROOT,
    clean_redis,
    deployment_spec,
    fresh_names,
    local_ray,
    model_entry,
    run_header,
    setup_control_plane,
    start_serve,
    write_results,
)

# Overrides LocalRay's high-throughput settings, for --serve-mode default.
DEFAULT_SERVE_ENV = {"RAY_SERVE_ENABLE_HA_PROXY": "0", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "0"}


def serve_config(port: int, prefix: str, queue: str, spool: str) -> dict[str, Any]:
    """The Vlinders applications as the control plane renders them (gateway + one model), plus
    the bare ingress application with a model server of its own, same engine and settings."""
    from inference.deployment import render_serve_config
    from inference.serving.spec import DeploymentSpec

    model = model_entry(
        "bench-syn",
        "synthetic",
        {"ttft_ms": 0, "tpot_ms": 0, "default_max_tokens": 16},
        context_length=4096,
        # 1,024 at once per replica and as many queued: the 1,000-client level fits.
        target_ongoing_requests=256,
        max_queued_requests=1024,
    )
    spec = deployment_spec(prefix, queue, spool, [model])
    config = render_serve_config(spec, host="127.0.0.1", port=port)
    parsed = DeploymentSpec.model_validate(spec)
    bare_model = parsed.model_args(parsed.models[0]).model_dump(mode="json")
    config["applications"].append(
        {
            "name": "bare",
            "route_prefix": "/bare",
            "args": {"model": {**bare_model, "deployment": "bare-model"}},
            "import_path": "passthrough_app:build_bare",
        }
    )
    return config


class CpuMeter:
    """CPU seconds (user + system) used by a set of processes: the Ray cluster's session
    (found again at each reading: replicas start and stop) and the Redis server."""

    def __init__(self, session: int | None, redis_pid: int | None) -> None:
        import psutil

        self.session = session
        self.redis_pid = redis_pid
        self._procs: dict[int, Any] = {}
        self._psutil = psutil

    def _pids(self) -> list[int]:
        from inference.ray_local import _session_members

        pids = _session_members(self.session) if self.session is not None else []
        return [*pids, *([self.redis_pid] if self.redis_pid else [])]

    def reading(self) -> dict[int, float]:
        """CPU seconds by pid, now."""
        out = {}
        for pid in self._pids():
            proc = self._procs.get(pid)
            try:
                if proc is None:
                    proc = self._procs[pid] = self._psutil.Process(pid)
                times = proc.cpu_times()
                out[pid] = times.user + times.system
            except self._psutil.Error:
                continue
        return out

    @staticmethod
    def used(before: dict[int, float], after: dict[int, float]) -> float:
        """CPU seconds between two readings (a process that started meanwhile counts whole)."""
        return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


def redis_server_pid() -> int | None:
    import redis
    from django.conf import settings

    try:
        return int(redis.Redis.from_url(settings.REDIS_URL).info("server")["process_id"])
    except Exception:
        return None


async def load(
    url: str, key: str | None, concurrency: int, total: int, *, meter: CpuMeter | None = None
) -> dict[str, float]:
    import aiohttp

    body = json.dumps(
        {
            "model": "bench-syn",
            "max_tokens": 16,
            "messages": [{"role": "user", "content": "benchmark prompt"}],
        }
    )
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    latencies: list[float] = []
    errors: Counter[str] = Counter()  # by HTTP status, or "connection"
    remaining = total

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            start = time.perf_counter()
            try:
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    if response.status != 200:
                        errors[str(response.status)] += 1
            except aiohttp.ClientError:
                errors["connection"] += 1
            latencies.append(time.perf_counter() - start)

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        cpu_before = meter.reading() if meter else {}
        began = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        wall = time.perf_counter() - began
        cpu = CpuMeter.used(cpu_before, meter.reading()) if meter else 0.0
    latencies.sort()
    return {
        "requests": len(latencies),
        "errors": dict(errors),
        "rps": len(latencies) / wall,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
        "cpu_ms_per_request": cpu * 1000 / len(latencies) if meter else float("nan"),
    }


class Stack:
    """One local Ray cluster with both applications deployed (the gateway and the bare one)."""

    def __init__(self, workdir: str, prefix: str, queue: str, *, mode: str) -> None:
        from tests.ray_fixtures import free_port

        self.dir = f"{workdir}/{mode}"
        self.port = free_port()
        self.cluster = local_ray(
            self.dir,
            num_cpus=None,
            env={
                "PYTHONPATH": str(ROOT / "bench"),
                **(DEFAULT_SERVE_ENV if mode == "default" else {}),
            },
        )
        self.config = serve_config(self.port, prefix, queue, f"{self.dir}/spool")

    def start(self) -> None:
        start_serve(self.cluster, self.config, f"{self.dir}/ray.log")

    def url(self, app: str) -> str:
        prefix = "/bare" if app == "bare" else ""
        return f"http://127.0.0.1:{self.port}{prefix}/v1/chat/completions"


def compare(
    baseline: tuple[str, str | None],
    candidate: tuple[str, str | None],
    *,
    levels: list[int],
    requests: int,
    rounds: int,
    meter: CpuMeter | None = None,
) -> list[dict[str, Any]]:
    """Load ``baseline`` and ``candidate`` (url, key) alternately at each level; per level the
    mean of the rounds and the candidate/baseline ratio (and CPU per request, with ``meter``)."""
    targets = {"baseline": baseline, "candidate": candidate}
    for url, secret in targets.values():  # warm up both
        asyncio.run(load(url, secret, 8, 200))
    results = []
    for level in levels:
        runs: dict[str, list[dict[str, float]]] = {"baseline": [], "candidate": []}
        for round_ in range(rounds):
            order = ["baseline", "candidate"] if round_ % 2 == 0 else ["candidate", "baseline"]
            for name in order:
                url, secret = targets[name]
                runs[name].append(asyncio.run(load(url, secret, level, requests, meter=meter)))
        row: dict[str, Any] = {"concurrency": level}
        for name, measured in runs.items():
            row[name] = {
                "rps": statistics.mean(m["rps"] for m in measured),
                "p50_ms": statistics.mean(m["p50_ms"] for m in measured),
                "p99_ms": statistics.mean(m["p99_ms"] for m in measured),
                "cpu_ms_per_request": statistics.mean(m["cpu_ms_per_request"] for m in measured),
                "errors": dict(sum((Counter(m["errors"]) for m in measured), Counter())),
            }
        row["rps_ratio"] = row["candidate"]["rps"] / row["baseline"]["rps"]
        row["p50_added_ms"] = row["candidate"]["p50_ms"] - row["baseline"]["p50_ms"]
        row["cpu_ms_added"] = (
            row["candidate"]["cpu_ms_per_request"] - row["baseline"]["cpu_ms_per_request"]
        )
        results.append(row)
        print(
            f"c={level}: baseline {row['baseline']['rps']:.0f} req/s "
            f"{row['baseline']['cpu_ms_per_request']:.2f} CPU ms/req, candidate "
            f"{row['candidate']['rps']:.0f} req/s "
            f"{row['candidate']['cpu_ms_per_request']:.2f} CPU ms/req, "
            f"ratio {row['rps_ratio']:.2f}",
            flush=True,
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="per target and level")
    parser.add_argument(
        "--concurrency", default="1,32,128", help="levels, e.g. 1,32,128,512,1000 for the big ones"
    )
    parser.add_argument("--rounds", type=int, default=2, help="alternations per level")
    parser.add_argument(
        "--serve-modes",
        action="store_true",
        help="instead: the full gateway on Serve's default proxy (baseline) against the same "
        "gateway in Serve's high-throughput mode with HAProxy (candidate), two clusters at once",
    )
    parser.add_argument(
        "--profile",
        metavar="SVG",
        help="instead: record the gateway replica with py-spy (a flame graph at SVG, and a "
        "top-functions text beside it) while the candidate runs at the first level",
    )
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]

    workdir, prefix, queue = fresh_names()
    key = setup_control_plane(workdir, prefix)
    modes = ["default", "throughput"] if args.serve_modes else ["throughput"]
    stacks = {mode: Stack(workdir, prefix, queue, mode=mode) for mode in modes}
    try:
        for stack in stacks.values():
            stack.start()
        if args.profile:
            stack = stacks["throughput"]
            profile(stack, key, args.profile, level=levels[0], requests=args.requests)
            return
        if args.serve_modes:
            name, labels = "serve_modes", ("default proxy", "HAProxy + throughput mode")
            baseline = (stacks["default"].url("gateway"), key)
            candidate = (stacks["throughput"].url("gateway"), key)
        else:
            name, labels = "gateway_overhead", ("bare ingress", "gateway")
            baseline = (stacks["throughput"].url("bare"), None)
            candidate = (stacks["throughput"].url("gateway"), key)
        session = stacks["throughput"].cluster.process
        meter = CpuMeter(session.pid if session else None, redis_server_pid())
        results = compare(
            baseline,
            candidate,
            levels=levels,
            requests=args.requests,
            rounds=args.rounds,
            meter=meter,
        )
    finally:
        for stack in stacks.values():
            stack.cluster.stop()
        clean_redis(prefix, queue)

    print()
    print(_table(results, labels))
    out = {
        **run_header(name),
        "baseline": labels[0],
        "candidate": labels[1],
        "requests_per_level": args.requests,
        "rounds": args.rounds,
        "engine": "synthetic (test engine, not a model): 16 tokens, no delay",
        "results": results,
    }
    write_results(out, RESULTS / f"{name}.json")


def replica_pid(stack: Stack, title: str = "ServeReplica:vlinders:Gateway") -> int:
    """The pid of the cluster's process whose command line names ``title`` (a replica)."""
    import psutil

    from inference.ray_local import _session_members

    assert stack.cluster.process is not None
    seen = []
    for pid in _session_members(stack.cluster.process.pid):
        try:
            line = " ".join(psutil.Process(pid).cmdline())
        except psutil.Error:
            continue
        if title in line:
            return pid
        seen.append(line[:80])
    raise RuntimeError(f"no process {title!r} in the cluster: {seen}")


def profile(stack: Stack, key: str, svg: str, *, level: int, requests: int) -> None:
    """py-spy the ingress replica during one load of each target: the gateway's flame graph at
    ``svg``, the bare ingress's at ``<svg>.bare.svg``; each with its top functions (own and
    total samples) printed and written beside it (``.txt.top.txt``)."""
    runs = (
        ("gateway", key, "ServeReplica:vlinders:Gateway", svg),
        ("bare", None, "ServeReplica:bare:BareIngress", svg.removesuffix(".svg") + ".bare.svg"),
    )
    for app, secret, title, out in runs:
        url = stack.url(app)
        asyncio.run(load(url, secret, 8, 200))  # warm up
        result, text = _record(replica_pid(stack, title), out, url, secret, level, requests)
        print(f"{app} c={level}: {result['rps']:.0f} req/s, p50 {result['p50_ms']:.1f} ms")
        print(text)


def _record(
    pid: int, svg: str, url: str, key: str | None, level: int, requests: int
) -> tuple[dict[str, float], str]:
    import subprocess

    spy = str(Path(sys.executable).with_name("py-spy"))
    raw = svg + ".txt"
    recorders = [
        subprocess.Popen(  # noqa: S603  (our own command line)
            [spy, "record", "-p", str(pid), "-o", out, "-f", fmt, "-r", "200", "--nonblocking"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for out, fmt in ((svg, "flamegraph"), (raw, "raw"))
    ]
    time.sleep(1.0)
    result = asyncio.run(load(url, key, level, requests))
    for recorder in recorders:
        recorder.send_signal(2)  # SIGINT: py-spy writes its output and exits
    for recorder in recorders:
        recorder.wait(timeout=60)
    return result, _top_functions(Path(raw))


def _top_functions(raw: Path, count: int = 40) -> str:
    """From py-spy's raw (collapsed stacks) output: the functions with most samples, own and
    total (a function counted once per stack)."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        frames = stack.split(";")
        samples += int(n)
        own[frames[-1]] += int(n)
        for frame in set(frames):
            total[frame] += int(n)
    lines = [f"{samples} samples", "", "own %  function"]
    lines += [f"{100 * n / samples:5.1f}  {f}" for f, n in own.most_common(count)]
    lines += ["", "total %  function"]
    lines += [f"{100 * n / samples:5.1f}  {f}" for f, n in total.most_common(count)]
    text = "\n".join(lines)
    raw.with_suffix(".top.txt").write_text(text + "\n")
    return text


def _table(results: list[dict[str, Any]], labels: tuple[str, str]) -> str:
    base, cand = labels
    lines = [
        f"| clients | {base} req/s | {cand} req/s | ratio | {base} p50 ms | {cand} p50 ms "
        f"| {base} p99 ms | {cand} p99 ms | {base} CPU ms/req | {cand} CPU ms/req "
        f"| {base} errors | {cand} errors |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        b, c = r["baseline"], r["candidate"]
        lines.append(
            f"| {r['concurrency']} | {b['rps']:.0f} | {c['rps']:.0f} | {r['rps_ratio']:.2f} "
            f"| {b['p50_ms']:.1f} | {c['p50_ms']:.1f} | {b['p99_ms']:.1f} | {c['p99_ms']:.1f} "
            f"| {b['cpu_ms_per_request']:.2f} | {c['cpu_ms_per_request']:.2f} "
            f"| {_errors(b['errors'])} | {_errors(c['errors'])} |"
        )
    return "\n".join(lines)


def _errors(by_status: dict[str, int]) -> str:
    """``0``, or each failing status with its count (``503: 12, connection: 1``)."""
    if not by_status:
        return "0"
    return ", ".join(f"{status}: {count}" for status, count in sorted(by_status.items()))


if __name__ == "__main__":
    main()
