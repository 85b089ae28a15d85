"""A real Prometheus (Debian's package, installed by .ci/run) scraping the running platform: the
package's gateway on the local Ray Serve (its /metrics with the metrics token: the gateway's,
the model servers' and vLLM's own metrics), Ray's metrics agents (as the head node lists them
for file discovery) and a control-plane server (uvicorn, /metrics with the same token).

After traffic through the gateway (official ``openai`` SDK): every target is up, every alert
rule of deploy/prometheus/alerts.yml evaluates without error (an empty result is fine), and
every query of every dashboard panel returns at least one series, except the panels that need
a GPU or the gateway's opt-in tenant labels (named in deploy/grafana/build_dashboards.py; their
queries must still evaluate). Waits are bounded polls; no wall-clock time is asserted.
"""

from __future__ import annotations

import json
import os
import runpy
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml
from django.conf import settings
from django.db import connections

from billing.models import UsageEvent, UsageRollup
from inference.models import ReplicaHours
from tenants import services, snapshot
from tenants.models import ApiKey, Organization, Role
from tests.billing.usage_data import add_rollup
from tests.factories import CatalogModelFactory, OrganizationFactory
from tests.ray_fixtures import METRICS_TOKEN, free_port
from tests.serving.conftest import SESSION_PREFIX, USAGE_QUEUE
from tests.serving.console_server import ROOT, ConsoleServer, start_console

pytestmark = [pytest.mark.ray]

ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARDS = ROOT / "deploy" / "grafana" / "dashboards"
BUILD = runpy.run_path(str(ROOT / "deploy" / "grafana" / "build_dashboards.py"))
# Panels allowed to be empty here (their queries must still evaluate): see the generator.
MAY_BE_EMPTY = BUILD["GPU_ONLY_PANELS"] | BUILD["TENANT_LABEL_PANELS"]
MODELS = ("syn-fast", "smollm2")
# Bounded waits: Ray's agents report every few seconds, vLLM's CPU engine is slow.
SETTLE_S = 180.0


@dataclass
class Tenant:
    org: Organization
    secret: str


@pytest.fixture(scope="module")
def committed(django_db_setup, django_db_blocker) -> Iterator[None]:  # type: ignore[no-untyped-def]
    """Rows the control-plane server (another process) can read: committed, deleted at the
    end by this module."""
    with django_db_blocker.unblock():
        connections.close_all()
        yield


@pytest.fixture(scope="module")
def observed(committed, gateway) -> Iterator[Tenant]:  # type: ignore[no-untyped-def]
    """An organisation with a key published to the gateway, the catalog rows of the models it
    uses (one with a replica-hour cost), and a month of usage in the rollups as ingest would
    have written it (no Celery worker runs in the serving tests)."""
    previous_prefix = settings.VLINDERS_REDIS_PREFIX
    settings.VLINDERS_REDIS_PREFIX = SESSION_PREFIX
    made = [
        CatalogModelFactory(name="syn-fast"),
        CatalogModelFactory(name="smollm2", cost_per_replica_hour=Decimal("0.90")),
    ]
    org = OrganizationFactory()
    key, secret = services.api_key_create(
        organization=org, name="prometheus", created_by=None, actor_role=Role.OWNER
    )
    snapshot.publish_organizations(Organization.objects.filter(pk=org.pk))
    snapshot.publish_keys(ApiKey.objects.filter(pk=key.pk))
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    add_rollup(key, hour, model="smollm2", prompt=1200, completion=800, cost="0.004")
    ReplicaHours.objects.create(catalog_model=made[1], hour=hour, replica_seconds=1800)
    try:
        yield Tenant(org, secret)
    finally:
        UsageEvent.objects.filter(organization_id=org.id).delete()
        UsageRollup.objects.filter(organization_id=org.id).delete()
        org.delete()
        for model in made:
            model.delete()
        settings.VLINDERS_REDIS_PREFIX = previous_prefix


@pytest.fixture(scope="module")
def control_plane(observed, gateway, usage_broker) -> Iterator[ConsoleServer]:  # type: ignore[no-untyped-def]
    """The control plane as production runs it (uvicorn), scraped with the same token as the
    gateway, its broker gauges reading the gateway's real usage queue."""
    extra = {
        "VLINDERS_METRICS_TOKEN": METRICS_TOKEN,
        "VLINDERS_METRICS_MONTH_CACHE_S": "0",
        "CELERY_BROKER_URL": usage_broker.url,
        "VLINDERS_USAGE_QUEUE": USAGE_QUEUE,
    }
    saved = {name: os.environ.get(name) for name in extra}
    os.environ.update(extra)
    try:
        port = int(gateway.base_url.rsplit(":", 1)[1])
        yield from start_console(redis_prefix=SESSION_PREFIX, gateway_port=port)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(scope="module")
def traffic(gateway, observed) -> None:  # type: ignore[no-untyped-def]
    """Requests of every kind the dashboards show: plain and streamed chat on the synthetic
    engine, a refused model, and the real vLLM CPU model (so vLLM records its own metrics)."""
    client = openai.OpenAI(
        base_url=f"{gateway.base_url}/v1", api_key=observed.secret, max_retries=0
    )
    messages = [{"role": "user", "content": "x"}]
    for _ in range(5):
        client.chat.completions.create(model="syn-fast", messages=messages, max_tokens=4)
    for _ in range(2):
        list(client.chat.completions.create(model="syn-fast", messages=messages, stream=True))
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=messages)
    list(
        client.chat.completions.create(
            model="smollm2",
            messages=[{"role": "user", "content": "Say hi"}],
            max_tokens=8,
            stream=True,
        )
    )


@dataclass
class Prometheus:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def api(self, path: str, **params: str) -> dict[str, Any]:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as reply:
            return json.loads(reply.read())

    def query(self, expr: str) -> dict[str, Any]:
        """The API's answer, errors included (a 400 carries ``status: error``)."""
        try:
            return self.api("query", query=expr)
        except urllib.error.HTTPError as error:
            return json.loads(error.read())


def scrape_config(work: Path, *, gateway: str, control_plane: str, ray_sd: str) -> Path:
    token = work / "metrics-token"
    token.write_text(METRICS_TOKEN)
    token.chmod(0o600)
    shutil.copy(ALERTS, work / "alerts.yml")
    auth = {"type": "Bearer", "credentials_file": str(token)}
    config = {
        # A 2 s timeout: 1 s missed scrapes of Ray's endpoints on a loaded CI machine.
        "global": {"scrape_interval": "2s", "evaluation_interval": "2s", "scrape_timeout": "2s"},
        "rule_files": ["alerts.yml"],
        "scrape_configs": [
            {
                "job_name": "vlinders-control-plane",
                "authorization": auth,
                "static_configs": [{"targets": [control_plane]}],
            },
            {
                "job_name": "vlinders-gateway",
                "authorization": auth,
                "static_configs": [{"targets": [gateway]}],
            },
            {"job_name": "ray", "file_sd_configs": [{"files": [ray_sd], "refresh_interval": "1s"}]},
        ],
    }
    path = work / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def prometheus(ray_cluster, gateway, control_plane, traffic) -> Iterator[Prometheus]:  # type: ignore[no-untyped-def]
    binary = shutil.which("prometheus")
    assert binary, "prometheus is needed (Debian package prometheus; .ci/run installs it)"
    work = Path(tempfile.mkdtemp(prefix="vl-prom-"))
    ray_sd = Path(ray_cluster.temp_dir) / "prom_metrics_service_discovery.json"
    config = scrape_config(
        work,
        gateway=gateway.base_url.removeprefix("http://"),
        control_plane=control_plane.url.removeprefix("http://"),
        ray_sd=str(ray_sd),
    )
    check = subprocess.run(
        [shutil.which("promtool") or "promtool", "check", "config", str(config)],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    port = free_port()
    log = work / "prometheus.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={work / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--storage.tsdb.retention.time=1h",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = Prometheus(f"http://127.0.0.1:{port}", process, log)
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{server.url}/-/ready", timeout=2).read()
            break
        except (urllib.error.URLError, ConnectionError):
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"Prometheus did not start:\n{log.read_text()}") from None
            time.sleep(0.2)
    try:
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
        shutil.rmtree(work, ignore_errors=True)


def _targets(prometheus: Prometheus) -> list[dict[str, Any]]:
    return prometheus.api("targets", state="active")["data"]["activeTargets"]


# Reads nothing of the database: the mark makes pytest-django create the test database when this
# module runs alone (its other tests use it only through module fixtures).
@pytest.mark.django_db
def test_every_target_is_up(prometheus):  # type: ignore[no-untyped-def]
    """Every target of every job is scraped successfully. Each must be seen ``up`` within the
    window, not all at the same instant: on a loaded 2-core CI machine one of Ray's endpoints
    (the node agent, the autoscaler's or the dashboard's, all in Ray's discovery file) can miss
    a scrape now and then; a target that never answers still fails."""
    deadline = time.monotonic() + SETTLE_S
    seen_up: set[str] = set()
    while True:
        targets = _targets(prometheus)
        jobs = {t["labels"]["job"] for t in targets}
        seen_up |= {t["scrapeUrl"] for t in targets if t["health"] == "up"}
        everyone = {t["scrapeUrl"] for t in targets}
        if {"vlinders-control-plane", "vlinders-gateway", "ray"} <= jobs and everyone <= seen_up:
            break
        if time.monotonic() > deadline:
            break
        time.sleep(1)
    summary = [(t["labels"]["job"], t["scrapeUrl"], t["health"], t["lastError"]) for t in targets]
    assert {"vlinders-control-plane", "vlinders-gateway", "ray"} <= jobs, summary
    never_up = [row for row in summary if row[1] not in seen_up]
    assert not never_up, never_up


def test_every_alert_rule_evaluates(prometheus):  # type: ignore[no-untyped-def]
    rules = [
        rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]
    ]
    assert rules
    for rule in rules:
        answer = prometheus.query(rule["expr"])
        assert answer["status"] == "success", (rule["alert"], answer)
    # And as Prometheus' rule manager evaluates them: no rule in error.
    deadline = time.monotonic() + 30
    while True:
        groups = prometheus.api("rules", type="alert")["data"]["groups"]
        loaded = [rule for group in groups for rule in group["rules"]]
        evaluated = all(not r["lastEvaluation"].startswith("0001") for r in loaded)
        if len(loaded) == len(rules) and evaluated:
            break
        if time.monotonic() > deadline:
            break
        time.sleep(1)
    assert len(loaded) == len(rules)
    assert evaluated, [(r["name"], r["lastEvaluation"]) for r in loaded]
    errors = [(r["name"], r.get("lastError")) for r in loaded if r["health"] == "err"]
    assert not errors, errors


def test_the_control_plane_reads_every_part_of_its_gauges(prometheus):  # type: ignore[no-untyped-def]
    """Against the real broker, Postgres and limiter Redis, no part of the platform collector
    fails (a failing part would leave its alerts blind)."""
    deadline = time.monotonic() + SETTLE_S
    while True:
        result = prometheus.query("vlinders_platform_collector_up")["data"]["result"]
        parts = {r["metric"]["part"]: r["value"][1] for r in result}
        if len(parts) == 4 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert parts == dict.fromkeys(("usage_queue", "dead_letters", "ingest", "month"), "1")


def _panel_queries(org: str) -> list[tuple[str, str, str]]:
    """(dashboard, panel title, expression) of every panel target, variables substituted."""
    out = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                expr = target["expr"].replace("$__rate_interval", "30s").replace("$org", org)
                out.append((board["uid"], panel["title"], expr))
    return out


def test_every_dashboard_query_returns_series(prometheus, observed):  # type: ignore[no-untyped-def]
    queries = _panel_queries(observed.org.slug)
    assert queries
    pending = list(queries)
    answers: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + SETTLE_S
    while pending and time.monotonic() < deadline:
        still = []
        for item in pending:
            answer = prometheus.query(item[2])
            answers[item[2]] = answer
            if answer["status"] != "success" or (
                not answer["data"]["result"] and item[1] not in MAY_BE_EMPTY
            ):
                still.append(item)
        pending = still
        if pending:
            time.sleep(1)
    for board, title, expr in queries:
        answer = answers[expr]
        assert answer["status"] == "success", (board, title, expr, answer)
        if title not in MAY_BE_EMPTY:
            assert answer["data"]["result"], (board, title, expr, "no series")
