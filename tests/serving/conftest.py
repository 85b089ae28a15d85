"""A real Vlinders data plane for the tests: the application deployed on a real local Ray
Serve (``ray_cluster``), reading the access snapshot and limits from the real Redis, sending
usage events to a real Redis broker of its own (so a test can take the broker down), and the
official ``openai`` SDK as the client.

The deployed application is shared by the whole session (deploying costs seconds); each test
makes its own organisation and keys, so tests never share limits or budgets.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
import redis
from django.conf import settings

from inference import demo_models
from inference.deployment import render_serve_config
from inference.models import ModelAliasSplit, Visibility
from inference.ray_client import RayDashboardClient
from tenants import services, snapshot
from tenants.models import ApiKey, Organization, Role
from tests.factories import CatalogModelFactory, ModelAliasFactory, OrganizationFactory
from tests.ray_fixtures import METRICS_TOKEN, free_port

SESSION_PREFIX = f"vltest:serve:{uuid.uuid4().hex[:8]}:"
USAGE_QUEUE = f"vltest-usage-{uuid.uuid4().hex[:8]}"


@pytest.fixture(autouse=True)
def _redis_prefix(settings) -> None:  # type: ignore[no-untyped-def]
    """Every serving test publishes under the prefix the deployed gateway reads."""
    settings.VLINDERS_REDIS_PREFIX = SESSION_PREFIX


@dataclass
class RedisServer:
    """A redis-server process of the test's own: the usage broker, which tests may stop."""

    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port)
        for _ in range(100):
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port)


@pytest.fixture(scope="package")
def usage_broker() -> Iterator[RedisServer]:
    server = RedisServer(port=free_port())
    server.start()
    yield server
    server.stop()


MODELS_DIR = Path(
    os.environ.get("VLINDERS_MODELS_DIR", Path(__file__).resolve().parents[2] / "var" / "models")
)
# vLLM on CPU as DESIGN.md measured it fast here: float32, eager mode, a small context.
VLLM_CPU = {
    "dtype": "float32",
    "enforce_eager": True,
    "max_model_len": 2048,
    "max_num_seqs": 8,
    "cpu_kvcache_space_gib": 1,
}

# The synthetic engine is the labelled test engine (not a model): fast and slow variants.
SYNTHETIC_FAST = {"ttft_ms": 0, "tpot_ms": 0, "default_max_tokens": 16}
SYNTHETIC_SLOW = {"ttft_ms": 20, "tpot_ms": 40, "default_max_tokens": 400}
SYNTHETIC_LOAD = {"ttft_ms": 5, "tpot_ms": 2, "default_max_tokens": 16}
SYNTHETIC_TIGHT = {"ttft_ms": 0, "tpot_ms": 50, "default_max_tokens": 100}
# Leases are renewed while a request runs; a short one in the tests shows that renewal works
# (a request longer than this keeps its slot: tests/serving/test_leases_e2e.py).
LEASE_S = 2.0


def _model(name: str, engine_args: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "deployment": f"model-{name}",
        "engine": "synthetic",
        "source": {},
        "engine_args": engine_args,
        "context_length": 4096,
        "price_input_per_mtok": "1.000000",
        "price_output_per_mtok": "2.000000",
        "aliases": [],
        "scaling": {"min_replicas": 1, "max_replicas": 1, "target_ongoing_requests": 64},
        "resources": {"num_cpus": 0.5, "num_gpus": 0, "accelerator_type": None},
        **extra,
    }


@dataclass
class Deployed:
    base_url: str
    spec: dict[str, Any]
    ray_dashboard: str
    token: str

    def get(self, path: str, *, token: str | None = None) -> tuple[int, str]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        request = urllib.request.Request(self.base_url + path, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def metric(self, name: str, **labels: str) -> float:
        """The summed value of one metric series on /metrics (0 when absent)."""
        from prometheus_client.parser import text_string_to_metric_families

        _, text = self.get("/metrics", token=METRICS_TOKEN)
        total = 0.0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    total += sample.value
        return total


def serve_config(spec: dict[str, Any], port: int) -> dict[str, Any]:
    """The Serve config of a test spec, rendered as the control plane renders the catalog's."""
    return render_serve_config(spec, host="127.0.0.1", port=port)


def deploy(ray_cluster: Any, config: dict[str, Any], *, timeout: float = 240) -> None:
    """PUT the Serve config to the dashboard and wait until every application is RUNNING."""
    client = RayDashboardClient(base_url=ray_cluster.dashboard_url, token=ray_cluster.token)
    client.put_applications(config)
    client.wait_running([app["name"] for app in config["applications"]], timeout=timeout)


def publish_upstream_key(deployment: str, api_key: str) -> None:
    """Publish an upstream model's key as the control plane does (``inference.upstream_secrets``:
    encrypted under the current ``VLINDERS_SECRETS_KEY``, at ``<prefix>upstream:v1:<deployment>``),
    for a test spec whose deployment names are its own."""
    from inference import upstream_secrets

    client = redis.Redis.from_url(settings.REDIS_URL)
    client.set(f"{SESSION_PREFIX}upstream:v1:{deployment}", upstream_secrets.encrypt(api_key))


@pytest.fixture(scope="package")
def upstream_key(django_db_setup, django_db_blocker) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """A key that the ``openai`` upstream engine uses to call back into this very gateway (a
    real OpenAI-compatible server), committed while the serving tests run, removed after."""
    with django_db_blocker.unblock():
        org = Organization.objects.create(name="Upstream", slug=f"upstream-{uuid.uuid4().hex[:6]}")
        key, secret = services.api_key_create(
            organization=org, name="upstream", created_by=None, actor_role=Role.OWNER
        )
        previous = settings.VLINDERS_REDIS_PREFIX
        settings.VLINDERS_REDIS_PREFIX = SESSION_PREFIX
        try:
            client = redis.Redis.from_url(settings.REDIS_URL)
            client.set(
                snapshot.org_record_name(org.id),
                json.dumps(snapshot.org_record(org, ["syn-fast"], 0)),
            )
            snapshot.publish_keys(ApiKey.objects.filter(pk=key.pk))
        finally:
            settings.VLINDERS_REDIS_PREFIX = previous
    yield secret
    with django_db_blocker.unblock():
        org.delete()


@pytest.fixture(scope="package")
def gateway(ray_cluster, serve_port, usage_broker, upstream_key) -> Iterator[Deployed]:  # type: ignore[no-untyped-def]
    port = serve_port
    smollm2 = demo_models.smollm2_path(MODELS_DIR / "cache", MODELS_DIR / "smollm2-135m-instruct")
    spool = tempfile.mkdtemp(prefix="vl-spool-")
    spec = {
        "spec_version": 1,
        "revision": "test",
        "redis_url": settings.REDIS_URL,
        "redis_prefix": SESSION_PREFIX,
        "broker_url": usage_broker.url,
        "usage_task": "billing.ingest_usage",
        "usage_queue": USAGE_QUEUE,
        "usage_spool_dir": spool,
        "gateway": {
            "min_replicas": 2,
            "max_replicas": 2,
            "num_cpus": 0.25,
            "max_body_bytes": 64 * 1024,
            "access_cache_ttl_s": 30,
            "lease_s": LEASE_S,
        },
        "models": [
            _model("syn-fast", SYNTHETIC_FAST, aliases=["syn-alias"]),
            _model("syn-slow", SYNTHETIC_SLOW),
            _model("syn-private", SYNTHETIC_FAST),
            # The response cache (test_response_cache_e2e): a TTL and a hit price of its own.
            _model("syn-cached", SYNTHETIC_FAST, cache_ttl_s=60, price_cache_hit_per_mtok="0.1"),
            # The load test's model: a replica takes 1,024 requests at once, more may queue.
            _model(
                "syn-load",
                SYNTHETIC_LOAD,
                scaling={"min_replicas": 1, "max_replicas": 1, "target_ongoing_requests": 256},
                max_queued_requests=1024,
            ),
            # Tight bounds for load shedding and timeouts: 8 requests at once, 4 more queued
            # per gateway replica, 3.5 s to finish (a queued 10-token request needs about 1 s;
            # a 100-token one 5 s). 2 s was too tight for a busy CI machine: queued requests
            # timed out.
            _model(
                "syn-tight",
                SYNTHETIC_TIGHT,
                scaling={"min_replicas": 1, "max_replicas": 1, "target_ongoing_requests": 1},
                max_queued_requests=4,
                request_timeout_s=3.5,
            ),
            {
                **_model("upstream-syn", {"timeout_s": 30}),
                "engine": "openai",
                "source": {
                    "base_url": f"http://127.0.0.1:{port}/v1",
                    "model": "syn-fast",
                    "api_key": upstream_key,
                },
            },
            {  # a real model on the real vLLM CPU engine: one replica for the whole package.
                # Two sequences at a time, so a third request waits: the priority test needs a
                # queue, and nothing else here needs more.
                **_model(
                    "smollm2",
                    {
                        **VLLM_CPU,
                        "max_num_seqs": 2,
                        "tool_call_parser": "hermes",
                        "scheduling_policy": "priority",
                    },
                ),
                "engine": "vllm",
                "source": {"path": str(smollm2)},
                "context_length": 2048,
                "resources": {"num_cpus": 1, "num_gpus": 0, "accelerator_type": None},
            },
            {  # a real embedding model on vLLM's pooling runner
                **_model(
                    "minilm",
                    {"task": "embed", "max_model_len": 256, "cpu_kvcache_space_gib": 0.25},
                ),
                "engine": "vllm",
                "source": {"path": str(demo_models.minilm_path())},
                "context_length": 256,
                "resources": {"num_cpus": 0.5, "num_gpus": 0, "accelerator_type": None},
            },
            {  # the same model as its Q4_1 GGUF, on llama.cpp (no de-quantising)
                **_model("smollm2-gguf", {"n_ctx": 2048, "n_threads": 1}),
                "engine": "llamacpp",
                "source": {
                    "path": str(demo_models.find_or_fetch_smollm2_gguf(MODELS_DIR / "cache"))
                },
                "context_length": 2048,
            },
            {  # an upstream whose credential the upstream refuses: the platform's fault
                **_model("upstream-badkey", {"timeout_s": 30}),
                "engine": "openai",
                "source": {
                    "base_url": f"http://127.0.0.1:{port}/v1",
                    "model": "syn-fast",
                    "api_key": "vlk_" + "X" * 52,
                },
            },
        ],
        # A weighted alias (a canary): 90% syn-fast, 10% syn-slow (test_weighted_aliases_e2e).
        "aliases": [
            {
                "name": "syn-ab",
                "targets": [
                    {"model": "syn-fast", "weight": 90},
                    {"model": "syn-slow", "weight": 10},
                ],
            }
        ],
    }
    # Upstream keys never travel in the config: published to Redis, encrypted, as the control
    # plane publishes a catalog model's.
    for model in spec["models"]:
        if model["engine"] == "openai":
            publish_upstream_key(model["deployment"], model["source"]["api_key"])
    deploy(ray_cluster, serve_config(spec, port))
    yield Deployed(f"http://127.0.0.1:{port}", spec, ray_cluster.dashboard_url, ray_cluster.token)
    shutil.rmtree(spool, ignore_errors=True)


@pytest.fixture
def catalog(db):  # type: ignore[no-untyped-def]
    """Catalog rows matching the deployed models, so organisation records list them."""
    fast = CatalogModelFactory(name="syn-fast")
    slow = CatalogModelFactory(name="syn-slow")
    CatalogModelFactory(name="syn-private", visibility=Visibility.RESTRICTED)
    CatalogModelFactory(name="syn-load")
    CatalogModelFactory(name="syn-cached")
    CatalogModelFactory(name="syn-tight")
    CatalogModelFactory(name="upstream-syn")
    CatalogModelFactory(name="upstream-badkey")
    CatalogModelFactory(name="smollm2")
    CatalogModelFactory(name="minilm")
    CatalogModelFactory(name="smollm2-gguf")
    ModelAliasFactory(name="syn-alias", target=fast)
    ModelAliasSplit.objects.create(
        alias=ModelAliasFactory(name="syn-ab", target=fast, weight=90),
        catalog_model=slow,
        weight=10,
    )
    return fast


Tenant = Callable[..., tuple[Organization, ApiKey, str]]


@pytest.fixture
def make_tenant(catalog, gateway) -> Tenant:  # type: ignore[no-untyped-def]
    """Make an organisation and a key, publish both, return (org, key, secret)."""

    def make(org_limits: dict[str, Any] | None = None, **key_options: Any):  # type: ignore[no-untyped-def]
        org = OrganizationFactory(**(org_limits or {}))
        key, secret = services.api_key_create(
            organization=org, name="test", created_by=None, actor_role=Role.OWNER, **key_options
        )
        snapshot.publish_organizations(Organization.objects.filter(pk=org.pk))
        snapshot.publish_keys(ApiKey.objects.filter(pk=key.pk))
        return org, key, secret

    return make


@pytest.fixture
def tenant(make_tenant) -> tuple[Organization, ApiKey, str]:  # type: ignore[no-untyped-def]
    return make_tenant()


@pytest.fixture
def client(gateway, tenant) -> openai.OpenAI:  # type: ignore[no-untyped-def]
    return openai.OpenAI(base_url=f"{gateway.base_url}/v1", api_key=tenant[2], max_retries=0)


def usage_events(
    broker: RedisServer, *, wait_for: Callable[[list[dict[str, Any]]], bool], timeout: float = 20.0
) -> list[dict[str, Any]]:
    """Read the usage events delivered to the test queue until ``wait_for`` is satisfied.

    Messages are Celery protocol 2 (body ``[args, kwargs, embed]``, the task name in headers);
    they stay in the queue (read with LRANGE), so later calls see earlier events too.
    """
    import base64

    client = broker.client()
    deadline = time.monotonic() + timeout
    events: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        events = []
        for raw in client.lrange(USAGE_QUEUE, 0, -1):
            message = json.loads(raw)
            assert message["headers"]["task"] == "billing.ingest_usage"
            body = json.loads(base64.b64decode(message["body"]))
            events.extend(body[0][0])
        if wait_for(events):
            return events
        time.sleep(0.2)
    return events


def month_usage(scope: str, ident: str) -> Any:
    """The limiter's month counters (used and reserved) of a key or organisation, as the
    deployed gateway left them in Redis."""
    import asyncio

    import redis.asyncio as aioredis

    from inference.serving.limits import Limiter

    async def read() -> Any:
        client = aioredis.Redis.from_url(settings.REDIS_URL)
        try:
            return await Limiter(client, SESSION_PREFIX).month_usage(scope, ident)  # type: ignore[arg-type]
        finally:
            await client.aclose()

    return asyncio.run(read())


class GatewayLog:
    """The ERROR records (tracebacks included) that the gateway's replicas write to their Serve
    logs from the moment this is made. An assertion about a burst puts :meth:`report` in its
    message, so a failure says which exception the gateway caught, not only how many requests
    it answered 500: on CI the Ray session's logs are gone with the machine."""

    LEVELS = frozenset({"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"})

    def __init__(self, ray_cluster: Any) -> None:
        self.folder = Path(ray_cluster.temp_dir or "/tmp/ray") / "session_latest" / "logs" / "serve"
        self.offsets = {path: path.stat().st_size for path in self._files()}

    def _files(self) -> list[Path]:
        return sorted(self.folder.glob("replica_vlinders_Gateway_*.log"))

    def errors(self) -> list[list[str]]:
        """Every ERROR record written since, as its lines: the record, then its traceback."""
        records: list[list[str]] = []
        for path in self._files():
            with path.open("rb") as file:
                file.seek(self.offsets.get(path, 0))
                text = file.read().decode(errors="replace")
            current: list[str] | None = None
            for line in text.splitlines():
                if line.split(" ", 1)[0] in self.LEVELS:
                    current = [line] if line.startswith(("ERROR ", "CRITICAL ")) else None
                    if current is not None:
                        records.append(current)
                elif current is not None and line.strip():
                    current.append(line)
        return records

    def report(self, *, examples: int = 2, lines: int = 60) -> str:
        """How many errors of each kind, and the first record of the commonest kinds."""
        if not self._files():
            return f"No gateway replica log in {self.folder}."
        records = self.errors()
        if not records:
            return "The gateway replicas logged no error."
        kinds = Counter(_error_kind(record) for record in records)
        out = [f"The gateway replicas logged {len(records)} errors:"]
        out += [f"  {count} x {kind}" for kind, count in kinds.most_common()]
        for kind, _ in kinds.most_common(examples):
            first = next(record for record in records if _error_kind(record) == kind)
            out += ["The first of these:", *first[:lines]]
        return "\n".join(out)


def _error_kind(record: list[str]) -> str:
    """What an error record says, without its ids: its message (the gateway's names the
    exception's class, ``request … failed: module.Class: message``)."""
    text = record[0].split(" -- ", 1)[-1]
    return re.sub(r"req_[0-9a-f]{32}|[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}", "…", text)[:300]
