"""The observability files of deploy/ (Prometheus scrape config and alert rules, Grafana
provisioning and dashboards) and the control plane's /metrics, without Ray.

promtool is Debian's ``prometheus`` package, which .ci/run installs: missing, these tests fail
rather than skip (the issue asks for the rules to be checked for real).
The real Prometheus against the running platform: tests/serving/test_prometheus_e2e.py.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import shutil
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
import yaml
from django.conf import settings
from prometheus_client.parser import text_string_to_metric_families

from billing.models import DeadLetterBatch
from inference.serving.limits import Limiter
from tests.billing.usage_data import add_event, add_rollup, make_key
from tests.factories import OrganizationFactory

ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS = ROOT / "deploy" / "prometheus"
GRAFANA = ROOT / "deploy" / "grafana"
DOCS = ROOT / "docs" / "observability.md"


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool is needed (Debian package prometheus; .ci/run installs it)"
    return path


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def dashboards() -> dict[str, dict[str, Any]]:
    return {
        path.name: json.loads(path.read_text())
        for path in sorted((GRAFANA / "dashboards").glob("*.json"))
    }


# --- Prometheus ---------------------------------------------------------------------------------
def test_promtool_checks_the_rules() -> None:
    result = subprocess.run(
        [promtool(), "check", "rules", str(PROMETHEUS / "alerts.yml")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_checks_the_config(tmp_path: Path) -> None:
    """The config as shipped (syntax), and in full once the token file it names exists (promtool
    checks that files referenced exist: here a copy beside a token file of the test's)."""
    shipped = PROMETHEUS / "prometheus.yml"
    result = subprocess.run(
        [promtool(), "check", "config", "--syntax-only", str(shipped)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    token = tmp_path / "token"
    token.write_text("x")
    text = shipped.read_text().replace("../../var/vlinders_metrics_token.secret", str(token))
    (tmp_path / "prometheus.yml").write_text(text)
    shutil.copy(PROMETHEUS / "alerts.yml", tmp_path / "alerts.yml")
    result = subprocess.run(
        [promtool(), "check", "config", str(tmp_path / "prometheus.yml")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_issue_s_alerts_are_all_there() -> None:
    names = {rule["alert"] for rule in alert_rules()}
    for required in (
        "VlindersGatewayLatencyP99High",
        "VlindersGatewayErrorRateHigh",
        "VlindersModelQueueBacklog",
        "VlindersKVCacheNearlyFull",
        "VlindersAcceleratorUtilisationLow",
        "VlindersUsageSpoolBacklog",
        "VlindersUsageIngestLag",
        "VlindersUsageDeadLetters",
        "VlindersBudgetCountersUnderReconciled",
    ):
        assert required in names


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    out = set()
    for line in markdown.splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            out.add(re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", title)))
    return out


def test_every_alert_has_for_severity_annotations_and_a_runbook() -> None:
    anchors = _anchors(DOCS.read_text())
    docs = DOCS.read_text()
    for rule in alert_rules():
        name = rule["alert"]
        assert rule.get("for"), name
        assert rule["labels"]["severity"] in {"page", "ticket"}, name
        assert rule["annotations"]["summary"], name
        description = rule["annotations"]["description"]
        runbook = re.search(r"docs/observability\.md#([\w-]+)", description)
        assert runbook, f"{name}: the description names no runbook"
        assert runbook.group(1) in anchors, f"{name}: no section #{runbook.group(1)} in the docs"
        assert f"`{name}`" in docs, f"{name} is not described in docs/observability.md"


# --- Grafana ------------------------------------------------------------------------------------
def test_grafana_provisioning_points_at_the_dashboards() -> None:
    datasources = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus"
    assert source["uid"] == "prometheus"
    providers = yaml.safe_load(
        (GRAFANA / "provisioning" / "dashboards" / "vlinders.yml").read_text()
    )
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"]


def test_dashboards_are_well_formed() -> None:
    boards = dashboards()
    assert {"platform.json", "tenant.json"} <= set(boards)
    uids = [board["uid"] for board in boards.values()]
    assert len(uids) == len(set(uids))
    for name, board in boards.items():
        panel_ids = [panel["id"] for panel in board["panels"]]
        assert len(panel_ids) == len(set(panel_ids)), name
        for panel in board["panels"]:
            if panel["type"] == "row":
                continue
            assert panel["datasource"]["uid"] == "prometheus", (name, panel["title"])
            assert panel["targets"], (name, panel["title"])
            for target in panel["targets"]:
                assert target["expr"].strip(), (name, panel["title"])
    tenant = boards["tenant.json"]
    variables = {v["name"]: v for v in tenant["templating"]["list"]}
    assert "org" in variables
    platform_titles = {p["title"] for p in boards["platform.json"]["panels"]}
    for title in (
        "Requests per second",
        "Latency P95 / P99",
        "Errors per second",
        "Time to first token",
        "Tokens per second",
        "Replicas",
        "Queue",
        "KV cache usage",
        "GPU utilisation",
        "Cost per 1M tokens (month to date)",
    ):
        assert title in platform_titles, title


def test_the_checked_in_dashboards_are_what_the_generator_writes(tmp_path: Path) -> None:
    """The dashboards are generated (deploy/grafana/build_dashboards.py): edit the generator,
    not the JSON."""
    subprocess.run(
        [sys.executable, str(GRAFANA / "build_dashboards.py"), str(tmp_path)],
        check=True,
        cwd=ROOT,
    )
    for name, board in dashboards().items():
        assert json.loads((tmp_path / name).read_text()) == board, name


# --- the control plane's /metrics ---------------------------------------------------------------
def _families(client: Any) -> dict[str, Any]:
    response = client.get(
        "/metrics", HTTP_AUTHORIZATION=f"Bearer {settings.VLINDERS_METRICS_TOKEN}"
    )
    assert response.status_code == 200
    return {f.name: f for f in text_string_to_metric_families(response.content.decode())}


def _value(families: dict[str, Any], name: str, **labels: str) -> float | None:
    for family in families.values():
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


@pytest.fixture
def fresh_collector(settings):  # type: ignore[no-untyped-def]
    """No month cache, and a usage queue and limiter prefix of the test's own."""
    import vlinders.metrics

    settings.VLINDERS_METRICS_MONTH_CACHE_S = 0
    settings.VLINDERS_USAGE_QUEUE = f"vltest-usage-{uuid.uuid4().hex[:8]}"
    settings.VLINDERS_REDIS_PREFIX = f"vltest:metrics:{uuid.uuid4().hex[:8]}:"
    vlinders.metrics._REGISTRY = None
    broker, queue = settings.CELERY_BROKER_URL, settings.VLINDERS_USAGE_QUEUE
    yield settings
    redis.Redis.from_url(broker).delete(queue)
    vlinders.metrics._REGISTRY = None


@pytest.mark.django_db
@pytest.mark.parametrize("token", [None, "wrong", ""])
def test_control_plane_metrics_are_for_the_scraper_only(client, token) -> None:  # type: ignore[no-untyped-def]
    headers = {} if token is None else {"HTTP_AUTHORIZATION": f"Bearer {token}"}
    response = client.get("/metrics", **headers)
    assert response.status_code == 404
    assert b"vlinders_" not in response.content


@pytest.mark.django_db
def test_control_plane_metrics_have_requests_and_platform_gauges(client, fresh_collector) -> None:  # type: ignore[no-untyped-def]
    client.get("/healthz")
    families = _families(client)
    assert "django_http_requests_latency_seconds_by_view_method" in families
    for part in ("usage_queue", "dead_letters", "ingest", "month"):
        assert _value(families, "vlinders_platform_collector_up", part=part) == 1, part
    assert _value(families, "vlinders_usage_queue_backlog_messages") == 0
    assert _value(families, "vlinders_usage_ingest_lag_seconds") == 0
    assert _value(families, "vlinders_usage_dead_letter_batches") == 0


def _celery_message(events: list[dict[str, Any]]) -> bytes:
    body = base64.b64encode(json.dumps([[events], {}, {}]).encode()).decode()
    return json.dumps({"body": body, "headers": {"task": "billing.ingest_usage"}}).encode()


@pytest.mark.django_db
def test_usage_queue_backlog_and_ingest_lag(client, fresh_collector) -> None:  # type: ignore[no-untyped-def]
    """kombu LPUSHes: the list's last element is the oldest message, its age is the lag."""
    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    now = datetime.now(UTC)
    old = (now - timedelta(minutes=10)).isoformat().replace("+00:00", "Z")
    new = now.isoformat().replace("+00:00", "Z")
    broker.lpush(fresh_collector.VLINDERS_USAGE_QUEUE, _celery_message([{"started_at": old}]))
    broker.lpush(fresh_collector.VLINDERS_USAGE_QUEUE, _celery_message([{"started_at": new}]))
    families = _families(client)
    assert _value(families, "vlinders_usage_queue_backlog_messages") == 2
    lag = _value(families, "vlinders_usage_ingest_lag_seconds")
    assert lag is not None
    assert 590 <= lag < 3600


@pytest.mark.django_db
def test_dead_letters_and_the_newest_ingested_event(client, fresh_collector) -> None:  # type: ignore[no-untyped-def]
    DeadLetterBatch.objects.create(events=[{}], error="boom")
    DeadLetterBatch.objects.create(
        events=[{}], error="boom", status=DeadLetterBatch.Status.REPLAYED
    )
    key = make_key(OrganizationFactory())
    started = datetime(2026, 11, 3, 4, 5, 6, tzinfo=UTC)
    add_event(key, started)
    families = _families(client)
    assert _value(families, "vlinders_usage_dead_letter_batches") == 1
    newest = _value(families, "vlinders_usage_last_ingested_event_timestamp_seconds")
    assert newest == started.timestamp()


def _set_counter(org_id: str, month: str, tokens: int) -> None:
    async def write() -> None:
        client = aioredis.Redis.from_url(settings.REDIS_URL)
        try:
            limiter = Limiter(client, settings.VLINDERS_REDIS_PREFIX)
            await limiter.set_month_used("org", org_id, month, tokens, Decimal(0))
        finally:
            await client.aclose()

    asyncio.run(write())


@pytest.mark.django_db
def test_month_figures_per_model_per_org_and_counter_reconciliation(
    client, fresh_collector
) -> None:  # type: ignore[no-untyped-def]
    from billing.spend import current_month
    from tests.factories import CatalogModelFactory

    CatalogModelFactory(name="m1", cost_per_replica_hour=Decimal("3.6"))
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    month = current_month()
    in_step, under, over = (OrganizationFactory() for _ in range(3))
    for org, tokens in ((in_step, 100), (under, 200), (over, 300)):
        add_rollup(make_key(org), hour, prompt=tokens // 2, completion=tokens // 2, cost="1.5")
    _set_counter(str(in_step.pk), month, 100)
    _set_counter(str(over.pk), month, 999)  # settled, not ingested yet
    # ``under`` has no counter: Redis lost it.
    families = _families(client)
    assert _value(families, "vlinders_tokens_month_to_date", model="m1") == 600
    assert _value(families, "vlinders_revenue_month_to_date_usd", model="m1") == 4.5
    assert _value(families, "vlinders_org_tokens_month_to_date", org=under.slug) == 200
    assert _value(families, "vlinders_org_spend_month_to_date_usd", org=over.slug) == 1.5
    assert _value(families, "vlinders_budget_counters_checked") == 3
    assert (
        _value(families, "vlinders_budget_counters_out_of_reconciliation", direction="under") == 1
    )
    assert _value(families, "vlinders_budget_counters_out_of_reconciliation", direction="over") == 1


@pytest.mark.django_db
def test_per_org_series_are_bounded(client, fresh_collector) -> None:  # type: ignore[no-untyped-def]
    fresh_collector.VLINDERS_METRICS_TOP_ORGS = 2
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    orgs = [OrganizationFactory() for _ in range(4)]
    for i, org in enumerate(orgs):
        add_rollup(make_key(org), hour, prompt=10, cost=str(i + 1))
    families = _families(client)
    spend = {
        s.labels["org"]: s.value for s in families["vlinders_org_spend_month_to_date_usd"].samples
    }
    assert spend == {orgs[3].slug: 4.0, orgs[2].slug: 3.0, "(other)": 3.0}


@pytest.mark.django_db
def test_a_failing_part_is_reported_not_fatal(client, fresh_collector) -> None:  # type: ignore[no-untyped-def]
    fresh_collector.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    families = _families(client)
    assert _value(families, "vlinders_platform_collector_up", part="usage_queue") == 0
    assert _value(families, "vlinders_platform_collector_up", part="dead_letters") == 1
    assert _value(families, "vlinders_usage_queue_backlog_messages") is None


@pytest.mark.django_db
def test_a_pod_scraped_by_its_ip_over_http_answers(client, settings) -> None:  # type: ignore[no-untyped-def]
    """Prometheus scrapes a web pod by IP over in-cluster HTTP: /metrics answers despite
    ALLOWED_HOSTS and SECURE_SSL_REDIRECT (its token guards it); every other URL still gets
    Django's host validation."""
    settings.ALLOWED_HOSTS = ["console.example.com"]
    settings.SECURE_SSL_REDIRECT = True
    settings.VLINDERS_METRICS_TOKEN = "scrape-token"
    pod = {"HTTP_HOST": "10.1.2.3:8000"}
    response = client.get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-token", **pod)
    assert response.status_code == 200
    assert b"vlinders_platform_collector_up" in response.content
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong", **pod).status_code == 404
    assert client.get("/healthz", **pod).status_code == 400
