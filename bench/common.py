"""What the benchmarks share, so each does not carry its own copy: the repository's paths, the
results file with the machine it ran on, percentiles, a markdown table, the loop of concurrent
clients and the alternating order of the targets, and the local stack the gateway benchmarks
start (a throwaway SQLite control plane, a Ray cluster with the Serve config deployed, the
spec's model entries). The throw-away Postgres database is ``bench_db``.

A benchmark runs as ``python bench/<name>.py``, so ``bench/`` is on ``sys.path`` and this module
imports as ``common``; importing it puts the repository root there too (``inference``,
``tenants``, ``tests``)."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import secrets
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from inference.ray_local import LocalRay

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"
MODELS_DIR = Path(os.environ.get("VLINDERS_MODELS_DIR", ROOT / "var" / "models"))


# --- results -------------------------------------------------------------------------------


def machine(**extra: Any) -> dict[str, Any]:
    """The machine a run was on (CPU count, platform), with ``extra`` fields."""
    return {"cpus": os.cpu_count(), "platform": platform.platform(), **extra}


def run_header(benchmark: str, **machine_extra: Any) -> dict[str, Any]:
    """The first fields of a results file: the benchmark's name, when (UTC) and the machine."""
    return {
        "benchmark": benchmark,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(**machine_extra),
    }


def write_results(out: dict[str, Any], path: Path) -> Path:
    """Write ``out`` as indented JSON at ``path`` (its folder made if need be) and say where."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nSaved {path}")
    return path


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]], align: str) -> str:
    """A markdown table; ``align`` has a letter per column: ``l`` (left) or ``r`` (right)."""
    rule = {"l": "---", "r": "---:"}

    def line(cells: Sequence[Any]) -> str:
        return "| " + " | ".join(str(cell) for cell in cells) + " |"

    lines = [line(header), "|" + "|".join(rule[a] for a in align) + "|"]
    lines += [line(row) for row in rows]
    return "\n".join(lines)


# --- statistics ----------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The value at rank ``int(q * n)`` of the sorted values (the last one at most)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def percentile_nearest(values: Sequence[float], q: float) -> float:
    """The value at the rank nearest to ``q * (n - 1)`` of the sorted values."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def median_ms(seconds: Sequence[float]) -> float | None:
    """The median of ``seconds`` in milliseconds; ``None`` for none."""
    return statistics.median(seconds) * 1000 if seconds else None


def percentile_ms(seconds: Sequence[float], q: float) -> float | None:
    """``percentile`` of ``seconds`` in milliseconds; ``None`` for none."""
    return percentile(seconds, q) * 1000 if seconds else None


def mean_of(runs: Sequence[dict[str, Any]], fields: Iterable[str]) -> dict[str, Any]:
    """Each of ``fields``' mean over ``runs``."""
    return {field: statistics.mean(run[field] for run in runs) for field in fields}


# --- load ----------------------------------------------------------------------------------


async def drive(one: Callable[[], Awaitable[None]], clients: int, total: int) -> float:
    """``total`` calls of ``one`` from ``clients`` concurrent clients, each making its next call
    when its last one is done; returns the wall time in seconds."""
    remaining = total

    async def client() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await one()

    began = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return time.perf_counter() - began


def alternating(names: Sequence[str], rounds: int) -> Iterator[tuple[int, str]]:
    """(round, name) for ``rounds`` rounds over ``names``, the order reversed every other round
    (A B, B A, A B, ...), so that the targets are measured under the same machine load."""
    for round_ in range(rounds):
        for name in names if round_ % 2 == 0 else list(reversed(names)):
            yield round_, name


def wait_http(url: str, timeout: float, headers: dict[str, str] | None = None) -> None:
    """Poll ``url`` until it answers 2xx, or raise ``TimeoutError`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            request = urllib.request.Request(url, headers=headers or {})  # noqa: S310
            with urllib.request.urlopen(request, timeout=5):  # noqa: S310 - local server
                return
        except (OSError, urllib.error.URLError):
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


def smollm2_path() -> Path:
    """The demo model's folder (SmolLM2-135M-Instruct), prepared from its PyPI package."""
    from inference import demo_models

    return demo_models.smollm2_path(MODELS_DIR / "cache", MODELS_DIR / "smollm2-135m-instruct")


# --- the local stack -----------------------------------------------------------------------


def fresh_names(tag: str = "") -> tuple[str, str, str]:
    """A work folder (made, ``/tmp/vl-bench-<tag>-…``), a Redis key prefix and a usage queue
    name of this run's own. Keep ``tag`` short: Ray's socket paths under the folder must stay
    within 107 bytes."""
    workdir = tempfile.mkdtemp(prefix=f"vl-bench-{tag}-" if tag else "vl-bench-")
    return workdir, f"vlbench:{secrets.token_hex(4)}:", f"vlbench-usage-{secrets.token_hex(4)}"


def setup_control_plane(
    workdir: str, prefix: str, *, model: str = "bench-syn", catalog: dict[str, Any] | None = None
) -> str:
    """A throwaway SQLite control plane: one organisation, one key, one catalog model (the
    synthetic test engine unless ``catalog`` says otherwise); publishes the access snapshot
    under ``prefix`` and returns the key."""
    os.environ["DATABASE_URL"] = f"sqlite:///{workdir}/bench.sqlite3"
    os.environ["VLINDERS_VAR_DIR"] = workdir
    os.environ["VLINDERS_REDIS_PREFIX"] = prefix
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "vlinders.settings")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from inference.models import CatalogModel
    from tenants import services, snapshot
    from tenants.models import Role

    CatalogModel.objects.create(
        name=model,
        **(
            catalog
            or {
                "engine_kind": "synthetic",
                "engine_args": {"ttft_ms": 0, "tpot_ms": 0},
                "context_length": 4096,
            }
        ),
    )
    huge = 10**12
    org = services.organization_create(
        name="Bench",
        slug="bench",
        requests_per_minute=huge,
        tokens_per_minute=huge,
        max_concurrent_requests=10**6,
        monthly_token_budget=huge,
        monthly_spend_budget=10**9,
    )
    _, secret = services.api_key_create(
        organization=org,
        name="bench",
        created_by=None,
        actor_role=Role.OWNER,
        requests_per_minute=huge,
        tokens_per_minute=huge,
        max_concurrent_requests=10**6,
    )
    snapshot.publish_full()
    return secret


def clean_redis(prefix: str, queue: str) -> None:
    """Delete the run's keys (under ``prefix``) and its usage queue from the local Redis."""
    import redis
    from django.conf import settings

    client = redis.Redis.from_url(settings.REDIS_URL)
    for name in client.scan_iter(match=prefix + "*", count=1000):
        client.delete(name)
    client.delete(queue)


def model_entry(
    name: str,
    engine: str,
    engine_args: dict[str, Any],
    *,
    context_length: int,
    target_ongoing_requests: int,
    replicas: int = 1,
    num_cpus: float = 0.5,
    source: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A model of a deployment spec as a benchmark serves it: deployment ``model-<name>``, fixed
    prices, no aliases, ``replicas`` replicas on CPU; ``extra`` fields added."""
    return {
        "name": name,
        "deployment": f"model-{name}",
        "engine": engine,
        "source": source or {},
        "engine_args": engine_args,
        "context_length": context_length,
        "price_input_per_mtok": "0.1",
        "price_output_per_mtok": "0.2",
        "aliases": [],
        "scaling": {
            "min_replicas": replicas,
            "max_replicas": replicas,
            "target_ongoing_requests": target_ongoing_requests,
        },
        "resources": {"num_cpus": num_cpus, "num_gpus": 0, "accelerator_type": None},
        **extra,
    }


def vllm_model(
    name: str,
    path: Path,
    *,
    max_model_len: int,
    max_num_seqs: int,
    kv_cache_gib: float,
    engine_args: dict[str, Any] | None = None,
    **entry: Any,
) -> dict[str, Any]:
    """``model_entry`` of the model at ``path`` on the vLLM CPU engine as the benchmarks run it
    (float32, eager mode; ``max_model_len`` is the context length too), with ``engine_args``
    added to the engine's and ``entry`` to the entry's."""
    args = {
        "dtype": "float32",
        "enforce_eager": True,
        "max_model_len": max_model_len,
        "max_num_seqs": max_num_seqs,
        "cpu_kvcache_space_gib": kv_cache_gib,
        **(engine_args or {}),
    }
    return model_entry(
        name, "vllm", args, source={"path": str(path)}, context_length=max_model_len, **entry
    )


def deployment_spec(
    prefix: str, queue: str, spool: str, models: list[dict[str, Any]], revision: str = "bench"
) -> dict[str, Any]:
    """A deployment spec on the local Redis (keys under ``prefix``, usage events to ``queue``)
    with one gateway replica and ``models``."""
    from django.conf import settings

    return {
        "spec_version": 1,
        "revision": revision,
        "redis_url": settings.REDIS_URL,
        "redis_prefix": prefix,
        "broker_url": settings.REDIS_URL,
        "usage_queue": queue,
        "usage_spool_dir": spool,
        "gateway": {"min_replicas": 1, "max_replicas": 1, "num_cpus": 0.5},
        "models": models,
    }


def local_ray(
    workdir: str, *, num_cpus: int | None = 4, env: dict[str, str] | None = None
) -> LocalRay:
    """A local Ray cluster (not started) on free ports, its files under ``workdir``; its
    processes get the key pepper (to check keys) and ``env``."""
    from django.conf import settings

    from inference.ray_local import LocalRay
    from tests.ray_fixtures import free_port

    return LocalRay(
        token=secrets.token_hex(32),
        gcs_port=free_port(),
        dashboard_port=free_port(),
        temp_dir=f"{workdir}/ray",
        metrics_dir=f"{workdir}/metrics",
        haproxy_stats_port=free_port(),
        haproxy_metrics_port=free_port(),
        num_cpus=num_cpus,
        env={"VLINDERS_KEY_PEPPER": settings.VLINDERS_KEY_PEPPER, **(env or {})},
    )


def deploy_apps(
    dashboard: str, token: str, config: dict[str, Any], names: list[str], timeout: float = 600
) -> None:
    """PUT the Serve config and wait until the named applications are RUNNING."""
    from inference.ray_client import RayDashboardClient

    client = RayDashboardClient(base_url=dashboard, token=token)
    client.put_applications(config)
    client.wait_running(names, timeout=timeout)


def start_serve(
    cluster: LocalRay, config: dict[str, Any], log_path: str, *, timeout: float = 600
) -> None:
    """Start ``cluster`` and deploy every application of the Serve ``config`` on it."""
    cluster.start(log_path=log_path)
    names = [app["name"] for app in config["applications"]]
    deploy_apps(cluster.dashboard_url, cluster.token, config, names, timeout=timeout)
