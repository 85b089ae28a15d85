"""Peer comparison: the same loader against a mock upstream directly, through Vlinders and
through the LiteLLM Proxy, side by side in one run.

The upstream is ``bench/mock_upstream.py``: a mock, not a model (a fixed 9-word answer with
usage, at once), run as its own process. Every target answers the same non-streamed chat
request (``gateway_overhead.load``: ``concurrency`` clients, each sending its next request when
the last one is answered):

- ``mock direct``: the loader talks to the mock itself (the floor: what the loader and the
  upstream cost);
- ``vlinders``: the full gateway as the control plane renders it (``render_spec`` of a catalog
  model of engine ``openai`` pointing at the mock), on a local Ray cluster in Serve's
  high-throughput mode (HAProxy): key check from the access snapshot, limits reserved and
  settled in Redis (every limit set), a usage event per request queued in Redis for billing,
  metrics. One gateway replica. It gets a Redis server of its own, so its CPU can be counted;
  the broker's usage queue is only filled (billing's ingestion into Postgres is a batched
  Celery task off the request path, not run here);
- ``litellm 1w`` and ``litellm 2w``: the LiteLLM Proxy (``litellm[proxy]`` pinned below, in a
  virtualenv of its own under ``var/bench-venvs/litellm``, created on first use) with one
  worker, and with two (LiteLLM's advice for two cores: one worker per core), the same model
  name routed to the mock, ``LITELLM_LOG=ERROR`` as its production guide advises.

LiteLLM's database mode and why it is not what runs here: LiteLLM's virtual keys (auth against
its database, spend tracking per key) need Prisma, whose ``prisma generate`` downloads the
Prisma query and schema engines (Rust binaries) from Prisma's own binary host. That host is not
reachable from this machine (only PyPI, the npm registry and Debian's archive are), so the
generate step fails (``getaddrinfo ENOTFOUND`` for the engine's checksum file) and no proxy
with ``DATABASE_URL`` can start; without a database ``/key/generate`` answers "DB not
connected. This endpoint needs a database". Prisma publishes the engines on that host only (its
maintainers say so in prisma/prisma-engines#4447; the alternative is building them from their
Rust source, whose crates cannot be fetched here either). So ``--litellm-mode auto`` (the
default) tries ``prisma generate`` first and, where it works, runs the database mode: a
Postgres database of its own (``vl_litellm_bench``, made anew) and a virtual key made through
``/key/generate`` with the master key, so LiteLLM checks the key and records spend as Vlinders
does. Where it fails (here), it runs the closest honest alternative and says so in the table
and the JSON: the proxy authenticates the master key (a constant comparison, no lookup) and
keeps no spend, so it does *less* per request than in its database mode: its figures are an
upper bound of what it does with virtual keys, and the ratios flatter it.

CPU per request: the CPU time (user + system, psutil) of the target's processes over the run,
divided by the requests: for Vlinders every process of its Ray cluster (the session of
``ray start``: GCS, raylet, dashboard, Serve controller, HAProxy, the gateway and model
replicas; Ray's background daemons included) plus its Redis server; for LiteLLM the proxy's
processes (and, in the database mode, the Postgres backends connected to its database); for
the mock its own process, reported for every target in a column of its own. The loader's own
CPU is not counted. Each level runs every target ``--rounds`` times, in an order rotated each
round, so the ratios are measured under the same machine load. On a machine that others load too,
every target's req/s drops with its share of the cores (the kernel shares them out by session:
Vlinders' cluster is one, its Redis another, each LiteLLM proxy one), while CPU per request
moves little: read both. The load average before and after is recorded.

    .venv/bin/python bench/peer_gateways.py [--requests 1000] [--concurrency 1,32,128]
        [--rounds 2] [--litellm-workers 1,2] [--litellm-mode auto|db|no-db]

Prints a markdown table and writes bench/results/peer_gateways.json. Needs the local Redis
server binary (``redis-server``) and, for LiteLLM's database mode, the local Postgres.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
from common import (
    RESULTS,
    ROOT,
    local_ray,
    run_header,
    setup_control_plane,
    start_serve,
    wait_http,
    write_results,
)

LITELLM_VENV = ROOT / "var" / "bench-venvs" / "litellm"
# 1.108.0: the newest release whose ``proxy`` extra installs from PyPI as this was written (later
# ones pin litellm-proxy-extras releases that are not there); 1.107.0 is the release reported
# compromised, not to be used. The Python Prisma client is what LiteLLM's database mode imports.
LITELLM_REQUIREMENTS = ["litellm[proxy]==1.108.0", "prisma==0.15.0"]
LITELLM_DB = "vl_litellm_bench"
MODEL = "bench-syn"  # the model name gateway_overhead.load asks for
MASTER_KEY = "sk-bench-" + secrets.token_hex(16)


# --- processes -----------------------------------------------------------------------------


def spawn(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """A child in a session of its own, so its whole process tree can be found (and stopped)
    by session id, however it forks."""
    return subprocess.Popen(  # noqa: S603 - our own command lines
        cmd,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )


def session_pids(session: int) -> list[int]:
    pids = []
    for pid in psutil.pids():
        try:
            if os.getsid(pid) == session and psutil.Process(pid).status() != "zombie":
                pids.append(pid)
        except (OSError, psutil.Error):
            continue
    return pids


def stop_session(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM to every process of the child's session, SIGKILL to what is left after
    ``timeout``."""
    for signum in (signal.SIGTERM, signal.SIGKILL):
        for pid in session_pids(process.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)
        deadline = time.monotonic() + timeout
        while session_pids(process.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if not session_pids(process.pid):
            break
    process.wait()


def postgres_backends(database: str) -> list[int]:
    """The Postgres server processes serving connections to ``database`` (their title names
    the database)."""
    pids = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if cmdline.startswith("postgres:") and f" {database} " in cmdline:
            pids.append(proc.pid)
    return pids


Snapshot = dict[int, tuple[float, float]]  # pid -> (create time, cpu seconds)


def cpu_snapshot(pids: list[int]) -> Snapshot:
    out: Snapshot = {}
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            times = proc.cpu_times()
            out[pid] = (proc.create_time(), times.user + times.system)
        except psutil.Error:
            continue
    return out


def cpu_delta(before: Snapshot, after: Snapshot) -> float:
    """CPU seconds spent between the snapshots by the processes alive at the second one (a
    process started in between counts whole; one that ended in between is lost)."""
    total = 0.0
    for pid, (created, seconds) in after.items():
        start = before.get(pid)
        total += seconds - (start[1] if start and start[0] == created else 0.0)
    return total


def post_json(url: str, body: dict[str, Any], key: str | None) -> dict[str, Any]:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(  # noqa: S310 - local server
        url, data=json.dumps(body).encode(), headers=headers, method="POST"
    )
    with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
        result: dict[str, Any] = json.loads(response.read())
    return result


def check_answer(name: str, url: str, key: str | None) -> None:
    """One request through the target: it must carry the mock's answer, or the run would
    measure error pages."""
    from mock_upstream import ANSWER

    body = {"model": MODEL, "max_tokens": 16, "messages": [{"role": "user", "content": "check"}]}
    try:
        reply = post_json(url, body, key)
    except urllib.error.HTTPError as error:
        raise RuntimeError(f"{name}: {error.code} {error.read()[:500]!r}") from error
    content = reply["choices"][0]["message"]["content"]
    if content != ANSWER or not reply.get("usage"):
        raise RuntimeError(f"{name} did not pass the mock's answer through: {reply}")


# --- the targets ---------------------------------------------------------------------------


class Target:
    """A URL to load, the key to send, and the processes whose CPU is this target's."""

    def __init__(
        self, name: str, url: str, key: str | None, pids: Callable[[], list[int]], counted: str
    ) -> None:
        self.name, self.url, self.key, self.pids, self.counted = name, url, key, pids, counted


def start_mock(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    from tests.ray_fixtures import free_port

    port = free_port()
    cmd = [sys.executable, str(ROOT / "bench" / "mock_upstream.py"), "--port", str(port)]
    process = spawn(cmd, workdir / "mock.log")
    wait_http(f"http://127.0.0.1:{port}/health", 30)
    return process, port


def start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    from tests.ray_fixtures import free_port

    port = free_port()
    cmd = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    cmd += ["--appendonly", "no", "--dir", str(workdir)]
    process = spawn(cmd, workdir / "redis.log")
    import redis

    deadline = time.monotonic() + 30
    while True:
        try:
            redis.Redis(port=port).ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    return process, port


class Vlinders:
    """The control plane's rendering of one ``openai`` catalog model pointing at the mock, on a
    local Ray cluster, with a Redis server of its own."""

    def __init__(self, workdir: Path, mock_port: int) -> None:
        self.workdir = workdir
        self.redis, redis_port = start_redis(workdir)
        redis_url = f"redis://127.0.0.1:{redis_port}/0"
        # Read by the settings when setup_control_plane starts Django.
        os.environ["REDIS_URL"] = redis_url
        os.environ["CELERY_BROKER_URL"] = redis_url
        os.environ["VLINDERS_USAGE_QUEUE"] = "bench-usage"
        self.key = setup_control_plane(
            str(workdir),
            "vlbench:",
            model=MODEL,
            catalog={
                "engine_kind": "openai",
                "upstream_base_url": f"http://127.0.0.1:{mock_port}/v1",
                "upstream_model": "mock",
                "context_length": 4096,
                "target_ongoing_requests": 256,
                "max_queued_requests": 1024,
                "replica_cpus": "0.5",
            },
        )
        self.cluster: Any = None

    def start(self) -> str:
        from django.conf import settings

        from inference.deployment import render_serve_config, render_spec
        from tests.ray_fixtures import free_port

        port = free_port()
        self.cluster = local_ray(
            str(self.workdir),
            num_cpus=8,  # logical: the replicas are light
            env={"VLINDERS_SECRETS_KEY": settings.VLINDERS_SECRETS_KEY},
        )
        config = render_serve_config(render_spec(), host="127.0.0.1", port=port)
        start_serve(self.cluster, config, str(self.workdir / "ray.log"))
        return f"http://127.0.0.1:{port}/v1/chat/completions"

    def pids(self) -> list[int]:
        return session_pids(self.cluster.process.pid) + session_pids(self.redis.pid)

    def usage_events_queued(self) -> int | None:
        """The usage events in the broker's queue (Celery messages of event batches), to show
        that every request was metered; ``None`` if a message is not in the expected shape."""
        import redis
        from django.conf import settings

        client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
        count = 0
        try:
            for raw in client.lrange(settings.VLINDERS_USAGE_QUEUE, 0, -1):
                message = json.loads(raw)
                args = json.loads(base64.b64decode(message["body"]))[0]
                count += len(args[0])
        except (ValueError, KeyError, IndexError, TypeError):
            return None
        return count

    def stop(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()
        stop_session(self.redis)


def ensure_litellm_venv() -> Path:
    """The LiteLLM virtualenv (``var/bench-venvs/litellm``), made and filled from PyPI when
    missing or when its pins changed; returns its ``litellm`` command."""
    marker = LITELLM_VENV / ".bench-requirements"
    wanted = "\n".join(LITELLM_REQUIREMENTS)
    if marker.exists() and marker.read_text() == wanted:
        return LITELLM_VENV / "bin" / "litellm"
    if not (LITELLM_VENV / "bin" / "python").exists():
        print(f"Creating the LiteLLM virtualenv: {sys.executable} -m venv {LITELLM_VENV}")
        subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True)  # noqa: S603
    pip = [str(LITELLM_VENV / "bin" / "python"), "-m", "pip", "install", "-q"]
    print(f"Installing into it: pip install {' '.join(LITELLM_REQUIREMENTS)}", flush=True)
    subprocess.run([*pip, *LITELLM_REQUIREMENTS], check=True)  # noqa: S603
    marker.write_text(wanted)
    return LITELLM_VENV / "bin" / "litellm"


def prisma_generate() -> str | None:
    """Run ``prisma generate`` on LiteLLM's schema (what its database mode needs); ``None``
    when it worked, else why not (the last line Prisma printed)."""
    marker = LITELLM_VENV / ".prisma-generated"
    if marker.exists():
        return None
    python = str(LITELLM_VENV / "bin" / "python")
    package = subprocess.run(  # noqa: S603
        [python, "-c", "import litellm, os; print(os.path.dirname(litellm.__file__))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    schema = Path(package) / "proxy" / "schema.prisma"
    print(f"Trying LiteLLM's database mode: prisma generate --schema {schema}", flush=True)
    env = dict(os.environ, PATH=f"{LITELLM_VENV / 'bin'}:{os.environ.get('PATH', '')}")
    try:
        done = subprocess.run(  # noqa: S603
            [str(LITELLM_VENV / "bin" / "prisma"), "generate", f"--schema={schema}"],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
    except subprocess.TimeoutExpired:
        return "prisma generate did not finish within 600 s"
    if done.returncode == 0:
        marker.write_text("ok\n")
        return None
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    return lines[-1] if lines else f"prisma generate exited with {done.returncode}"


def reset_litellm_database() -> str:
    import psycopg

    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as db:
        db.execute(f'DROP DATABASE IF EXISTS "{LITELLM_DB}" WITH (FORCE)')
        db.execute(f'CREATE DATABASE "{LITELLM_DB}"')
    return f"postgresql://postgres@127.0.0.1:5432/{LITELLM_DB}"


class LiteLLM:
    """One LiteLLM Proxy with ``workers`` workers routing ``bench-syn`` to the mock."""

    def __init__(
        self, command: Path, workdir: Path, mock_port: int, workers: int, database: str | None
    ) -> None:
        from tests.ray_fixtures import free_port

        self.workers, self.database = workers, database
        self.port = free_port()
        config = workdir / f"litellm-{workers}w.yaml"
        config.write_text(
            json.dumps(  # JSON is YAML
                {
                    "model_list": [
                        {
                            "model_name": MODEL,
                            "litellm_params": {
                                "model": "openai/mock",
                                "api_base": f"http://127.0.0.1:{mock_port}/v1",
                                "api_key": "mock-key",
                            },
                        }
                    ],
                    "general_settings": {"master_key": MASTER_KEY},
                },
                indent=2,
            )
        )
        env = dict(os.environ, LITELLM_LOG="ERROR")
        for name in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL"):  # ours, not its
            env.pop(name, None)
        if database:
            env["DATABASE_URL"] = database
        env["PATH"] = f"{LITELLM_VENV / 'bin'}:{env.get('PATH', '')}"
        cmd = [str(command), "--config", str(config), "--host", "127.0.0.1"]
        cmd += ["--port", str(self.port), "--num_workers", str(workers), "--telemetry", "False"]
        self.process = spawn(cmd, workdir / f"litellm-{workers}w.log", env)
        self.url = f"http://127.0.0.1:{self.port}/v1/chat/completions"

    def ready(self) -> str:
        """Wait until it answers; the key to send: a virtual key made through ``/key/generate``
        in the database mode, else the master key."""
        wait_http(f"http://127.0.0.1:{self.port}/health/liveliness", 300)
        if not self.database:
            return MASTER_KEY
        made = post_json(
            f"http://127.0.0.1:{self.port}/key/generate",
            {"models": [MODEL], "key_alias": f"bench-{self.workers}w"},
            MASTER_KEY,
        )
        return str(made["key"])

    def pids(self) -> list[int]:
        pids = session_pids(self.process.pid)
        return pids + postgres_backends(LITELLM_DB) if self.database else pids

    def stop(self) -> None:
        stop_session(self.process)


# --- the run -------------------------------------------------------------------------------


def measure(
    target: Target, mock_pids: Callable[[], list[int]], level: int, requests: int
) -> dict[str, Any]:
    from gateway_overhead import load

    own, mock = cpu_snapshot(target.pids()), cpu_snapshot(mock_pids())
    result: dict[str, Any] = asyncio.run(load(target.url, target.key, level, requests))
    own_cpu = cpu_delta(own, cpu_snapshot(target.pids()))
    mock_cpu = cpu_delta(mock, cpu_snapshot(mock_pids()))
    result["cpu_ms_per_req"] = own_cpu * 1000 / result["requests"]
    result["mock_cpu_ms_per_req"] = mock_cpu * 1000 / result["requests"]
    return result


def idle_cpu(targets: list[Target], seconds: float = 5.0) -> dict[str, float]:
    """Each target's CPU use at rest, in % of one core (Ray's daemons poll, for one)."""
    before = {t.name: cpu_snapshot(t.pids()) for t in targets}
    time.sleep(seconds)
    return {
        t.name: cpu_delta(before[t.name], cpu_snapshot(t.pids())) * 100 / seconds for t in targets
    }


def summarise(level: int, runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    row: dict[str, Any] = {"concurrency": level, "targets": {}}
    for name, measured in runs.items():
        row["targets"][name] = {
            **{
                field: statistics.mean(m[field] for m in measured)
                for field in ("rps", "p50_ms", "p99_ms", "cpu_ms_per_req", "mock_cpu_ms_per_req")
            },
            "errors": dict(sum((Counter(m["errors"]) for m in measured), Counter())),
            "runs": measured,
        }
    targets = row["targets"]
    mock, vl = targets["mock direct"], targets["vlinders"]
    row["rps_vs_mock"] = {name: t["rps"] / mock["rps"] for name, t in targets.items()}
    row["vlinders_vs"] = {
        name: {
            "rps_ratio": vl["rps"] / t["rps"],
            "p50_ratio": t["p50_ms"] / vl["p50_ms"],
            "cpu_per_req_ratio": t["cpu_ms_per_req"] / vl["cpu_ms_per_req"],
        }
        for name, t in targets.items()
        if name.startswith("litellm")
    }
    return row


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| clients | target | req/s | p50 ms | p99 ms | CPU ms/req | mock CPU ms/req | errors "
        "| req/s ÷ mock direct | Vlinders req/s ÷ this | this CPU/req ÷ Vlinders |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in results:
        vl = row["targets"]["vlinders"]
        for name, t in row["targets"].items():
            errors = ", ".join(f"{k}: {v}" for k, v in sorted(t["errors"].items())) or "0"
            lines.append(
                f"| {row['concurrency']} | {name} | {t['rps']:.0f} | {t['p50_ms']:.1f} "
                f"| {t['p99_ms']:.1f} | {t['cpu_ms_per_req']:.2f} | {t['mock_cpu_ms_per_req']:.2f} "
                f"| {errors} | {row['rps_vs_mock'][name]:.3f} | {vl['rps'] / t['rps']:.2f} "
                f"| {t['cpu_ms_per_req'] / vl['cpu_ms_per_req']:.2f} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=1000, help="per target, level, round")
    parser.add_argument("--concurrency", default="1,32,128")
    parser.add_argument("--rounds", type=int, default=2, help="alternations per level")
    parser.add_argument("--litellm-workers", default="1,2", help="one proxy per count")
    parser.add_argument(
        "--litellm-mode",
        choices=["auto", "db", "no-db"],
        default="auto",
        help="db: virtual key in LiteLLM's Postgres (needs Prisma's engines); no-db: master key "
        "only; auto: db where prisma generate works, else no-db (the module's docstring says why)",
    )
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    workers = [int(w) for w in args.litellm_workers.split(",") if w]

    command = ensure_litellm_venv()
    why_not_db = None if args.litellm_mode == "no-db" else prisma_generate()
    if args.litellm_mode == "db" and why_not_db:
        raise SystemExit(f"LiteLLM's database mode cannot run here: {why_not_db}")
    db_mode = args.litellm_mode != "no-db" and why_not_db is None
    litellm_mode = (
        "database: a virtual key made with /key/generate, spend tracked in Postgres"
        if db_mode
        else "no database: the master key, no spend tracking (less work than its database "
        "mode, so its figures are an upper bound)"
    )
    print(f"LiteLLM mode: {litellm_mode}" + (f" (prisma: {why_not_db})" if why_not_db else ""))

    load_before = os.getloadavg()
    workdir = Path(tempfile.mkdtemp(prefix="vl-bench-peers-"))
    started: list[Any] = []
    mock_process, mock_port = start_mock(workdir)
    try:
        vlinders = Vlinders(workdir, mock_port)
        started.append(vlinders)
        database = reset_litellm_database() if db_mode else None
        proxies = [LiteLLM(command, workdir, mock_port, n, database) for n in workers]
        started.extend(proxies)
        vlinders_url = vlinders.start()

        def mock_pids() -> list[int]:
            return session_pids(mock_process.pid)

        mock_url = f"http://127.0.0.1:{mock_port}/v1/chat/completions"
        targets = [
            Target("mock direct", mock_url, None, mock_pids, "the mock's process"),
            Target(
                "vlinders",
                vlinders_url,
                vlinders.key,
                vlinders.pids,
                "the Ray cluster's processes (session of ray start) + its Redis server",
            ),
        ]
        for proxy in proxies:
            targets.append(
                Target(
                    f"litellm {proxy.workers}w",
                    proxy.url,
                    proxy.ready(),
                    proxy.pids,
                    "the proxy's processes"
                    + (" + Postgres backends of its database" if db_mode else ""),
                )
            )
        for target in targets:
            check_answer(target.name, target.url, target.key)
        from gateway_overhead import load

        for target in targets:  # warm up every one
            asyncio.run(load(target.url, target.key, 8, 200))
        idle = idle_cpu(targets)
        print("idle CPU, % of a core: " + ", ".join(f"{k} {v:.1f}" for k, v in idle.items()))
        results = []
        for level in levels:
            runs: dict[str, list[dict[str, Any]]] = {t.name: [] for t in targets}
            for round_ in range(args.rounds):
                shift = round_ % len(targets)
                for target in targets[shift:] + targets[:shift]:
                    result = measure(target, mock_pids, level, args.requests)
                    runs[target.name].append(result)
                    print(
                        f"c={level} round {round_ + 1} {target.name}: {result['rps']:.0f} req/s, "
                        f"p50 {result['p50_ms']:.1f} ms, CPU {result['cpu_ms_per_req']:.2f} "
                        f"ms/req, errors {result['errors'] or 0}",
                        flush=True,
                    )
            results.append(summarise(level, runs))
        time.sleep(3)  # the emitter flushes its last batch
        runs_sent = (m["requests"] for r in results for m in r["targets"]["vlinders"]["runs"])
        sent = 1 + 200 + sum(runs_sent)  # the check, the warm-up, the runs
        metered = {"requests_sent": sent, "usage_events_queued": vlinders.usage_events_queued()}
        print(f"Vlinders usage events: {metered}")
    finally:
        for service in reversed(started):
            service.stop()
        stop_session(mock_process)
    versions = {"litellm": LITELLM_REQUIREMENTS[0].split("==")[1]}

    print()
    print(
        "Mock upstream (not a model): a fixed 9-word answer. LiteLLM "
        f"{versions['litellm']}, {litellm_mode}."
    )
    print(table(results))
    print(f"Load average (1 min) before and after: {load_before[0]:.1f}, {os.getloadavg()[0]:.1f}")
    out = {
        **run_header(
            "peer_gateways",
            # Others' work on the machine slows every target's req/s; CPU per request less so.
            load_average_1m_before_after=[load_before[0], os.getloadavg()[0]],
        ),
        "commit": _commit(),
        "upstream": "bench/mock_upstream.py (a mock, not a model): 9-word answer with usage",
        "litellm": {
            "requirements": LITELLM_REQUIREMENTS,
            "mode": litellm_mode,
            "database_mode_unavailable_because": why_not_db,
            "workers": workers,
        },
        "cpu_counted": {t.name: t.counted for t in targets},
        "vlinders_metering": metered,
        "idle_cpu_pct_of_core": idle,
        "requests_per_level": args.requests,
        "rounds": args.rounds,
        "results": results,
    }
    write_results(out, RESULTS / "peer_gateways.json")
    shutil.rmtree(workdir, ignore_errors=True)


def _commit() -> str:
    """HEAD, and whether the data plane's files differ from it (the run measured those)."""
    try:
        head = subprocess.run(  # noqa: S603
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],  # noqa: S607
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        changed = subprocess.run(  # noqa: S603
            ["git", "-C", str(ROOT), "diff", "--quiet", "HEAD", "--", "inference"],  # noqa: S607
            check=False,
        ).returncode
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" + uncommitted changes in inference/" if changed else "")


if __name__ == "__main__":
    main()
