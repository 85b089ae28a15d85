"""Write Vlinders' Grafana dashboards (platform.json, tenant.json) from one description.

The JSON files beside this script are its output and are checked in, so Grafana's file
provisioning reads them as they are; tests/test_observability_files.py checks that they are
what this script writes. Edit here, then run ``python deploy/grafana/build_dashboards.py``.

Every panel's queries are evaluated against a real Prometheus scraping the running platform by
tests/serving/test_prometheus_e2e.py (with ``$org`` and ``$__rate_interval`` substituted).
Metric names: docs/observability.md.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

DATASOURCE = {"type": "prometheus", "uid": "prometheus"}
RATE = "$__rate_interval"

# Panels whose queries have no series where no GPU is present (this repository's CI machines):
# the test evaluates them, and accepts an empty result for these only.
GPU_ONLY_PANELS = frozenset({"GPU utilisation"})
# Panels with series only when the gateway labels requests by organisation
# (VLINDERS_METRICS_TENANT_LABELS=1 in the Ray cluster's environment; off by default).
TENANT_LABEL_PANELS = frozenset({"Live requests per second (tenant labels)"})


def target(expr: str, legend: str = "", ref: str = "A") -> dict[str, Any]:
    return {
        "datasource": DATASOURCE,
        "expr": expr,
        "legendFormat": legend,
        "refId": ref,
        "range": True,
    }


def panel(
    title: str,
    targets: list[tuple[str, str]],
    *,
    unit: str = "short",
    kind: str = "timeseries",
    description: str = "",
    width: int = 12,
    height: int = 8,
) -> dict[str, Any]:
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {},
        "targets": [
            target(expr, legend, chr(ord("A") + i)) for i, (expr, legend) in enumerate(targets)
        ],
        "gridPos": {"w": width, "h": height},
    }


def row(title: str) -> dict[str, Any]:
    return {
        "type": "row",
        "title": title,
        "collapsed": False,
        "panels": [],
        "gridPos": {"w": 24, "h": 1},
    }


def layout(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Ids and grid positions, left to right, top to bottom."""
    x = y = line = 0
    for number, item in enumerate(panels, start=1):
        item["id"] = number
        w, h = item["gridPos"]["w"], item["gridPos"]["h"]
        if x + w > 24:
            x, y = 0, y + line
            line = 0
        item["gridPos"] = {"x": x, "y": y, "w": w, "h": h}
        x += w
        line = max(line, h)
        if item["type"] == "row":
            x, y, line = 0, y + h, 0
    return panels


def dashboard(
    uid: str, title: str, panels: list[dict[str, Any]], variables: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "uid": uid,
        "title": title,
        "tags": ["vlinders"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": variables},
        "annotations": {"list": []},
        "panels": layout(panels),
    }


def platform() -> dict[str, Any]:
    latency = "vlinders_request_latency_seconds_bucket"
    ttft = "vlinders_time_to_first_token_seconds_bucket"
    panels = [
        row("Gateway"),
        panel(
            "Requests per second",
            [(f"sum by (model) (rate(vlinders_requests_total[{RATE}]))", "{{model}}")],
            unit="reqps",
        ),
        panel(
            "Latency P95 / P99",
            [
                (f"histogram_quantile(0.95, sum by (le) (rate({latency}[{RATE}])))", "p95"),
                (f"histogram_quantile(0.99, sum by (le) (rate({latency}[{RATE}])))", "p99"),
            ],
            unit="s",
            description="Request to last byte, every model (streams included).",
        ),
        panel(
            "Errors per second",
            [
                (f"sum by (type, code) (rate(vlinders_errors_total[{RATE}]))", "{{type}} {{code}}"),
                (
                    f'(sum(rate(vlinders_requests_total{{status=~"5.."}}[{RATE}])) or vector(0))'
                    f" / sum(rate(vlinders_requests_total[{RATE}]))",
                    "5xx share",
                ),
            ],
            description="Refused and failed requests by OpenAI error type; the share of 5xx "
            "answers (the platform's fault).",
        ),
        panel(
            "Time to first token",
            [
                (
                    f"histogram_quantile(0.5, sum by (le, model) (rate({ttft}[{RATE}])))",
                    "gateway p50 {{model}}",
                ),
                (
                    f"histogram_quantile(0.95, sum by (le, model) (rate({ttft}[{RATE}])))",
                    "gateway p95 {{model}}",
                ),
                (
                    "histogram_quantile(0.95, sum by (le, model_name) "
                    f'(rate({{__name__="vllm:time_to_first_token_seconds_bucket"}}[{RATE}])))',
                    "engine p95 {{model_name}}",
                ),
            ],
            unit="s",
        ),
        panel(
            "Tokens per second",
            [
                (
                    f"sum by (direction) (rate(vlinders_tokens_total[{RATE}]))",
                    "metered {{direction}}",
                ),
                (
                    "sum by (model_name) "
                    f'(rate({{__name__="vllm:generation_tokens_total"}}[{RATE}]))',
                    "generated {{model_name}}",
                ),
            ],
            unit="short",
        ),
        panel(
            "Time per output token",
            [
                (
                    "histogram_quantile(0.95, sum by (le, model_name) "
                    f'(rate({{__name__="vllm:inter_token_latency_seconds_bucket"}}[{RATE}])))',
                    "p95 {{model_name}}",
                )
            ],
            unit="s",
        ),
        row("Models and cluster"),
        panel(
            "Replicas",
            [
                (
                    "sum by (application) (ray_serve_deployment_replica_healthy)",
                    "{{application}}",
                )
            ],
            description="Healthy Serve replicas per application (Ray's metrics).",
        ),
        panel(
            "Queue",
            [
                (
                    'sum by (model_name) ({__name__="vllm:num_requests_waiting"})',
                    "waiting {{model_name}}",
                ),
                (
                    'sum by (model_name) ({__name__="vllm:num_requests_running"})',
                    "running {{model_name}}",
                ),
                ("sum by (model) (vlinders_requests_in_flight)", "in flight {{model}}"),
            ],
            description="vLLM's waiting and running requests per model; requests in flight at "
            "the gateways (every engine).",
        ),
        panel(
            "KV cache usage",
            [('max by (model_name) ({__name__="vllm:kv_cache_usage_perc"})', "{{model_name}}")],
            unit="percentunit",
        ),
        panel(
            "GPU utilisation",
            [("avg by (Hostname, gpu) (DCGM_FI_DEV_GPU_UTIL)", "{{Hostname}} GPU {{gpu}}")],
            unit="percent",
            description="dcgm-exporter on GPU nodes; empty on CPU-only clusters.",
        ),
        row("Usage pipeline and money"),
        panel(
            "Usage pipeline",
            [
                ("max(vlinders_usage_queue_backlog_messages)", "broker queue (batches)"),
                ("max(vlinders_usage_ingest_lag_seconds)", "ingest lag (s)"),
                ("sum(vlinders_usage_spool_backlog_batches)", "gateway spools (batches)"),
                ("max(vlinders_usage_dead_letter_batches)", "dead letters (batches)"),
            ],
        ),
        panel(
            "Cost per 1M tokens (month to date)",
            [
                (
                    "sum(vlinders_serving_cost_month_to_date_usd) * 1e6"
                    " / sum(vlinders_tokens_month_to_date)",
                    "serving cost",
                ),
                (
                    "sum(vlinders_revenue_month_to_date_usd) * 1e6"
                    " / sum(vlinders_tokens_month_to_date)",
                    "revenue",
                ),
            ],
            unit="currencyUSD",
            kind="stat",
            width=6,
            description="Replica-hours x the catalog's cost_per_replica_hour, and usage revenue, "
            "per million tokens served this month (models without a cost are left out of the "
            "cost).",
        ),
        panel(
            "Revenue month to date",
            [("sum by (model) (vlinders_revenue_month_to_date_usd)", "{{model}}")],
            unit="currencyUSD",
            width=6,
        ),
        panel(
            "Budget counters out of reconciliation",
            [
                (
                    "max by (direction) (vlinders_budget_counters_out_of_reconciliation)",
                    "{{direction}}",
                )
            ],
        ),
    ]
    return dashboard("vlinders-platform", "Vlinders platform", panels, [])


def tenant() -> dict[str, Any]:
    org = 'org="$org"'
    variables = [
        {
            "name": "org",
            "label": "Organisation",
            "type": "query",
            "datasource": DATASOURCE,
            "query": {
                "query": "label_values(vlinders_org_spend_month_to_date_usd, org)",
                "refId": "org",
            },
            "definition": "label_values(vlinders_org_spend_month_to_date_usd, org)",
            "refresh": 2,
            "sort": 1,
            "includeAll": False,
            "multi": False,
        }
    ]
    panels = [
        row("Month to date (control plane, the largest spenders)"),
        panel(
            "Spend",
            [(f"max(vlinders_org_spend_month_to_date_usd{{{org}}})", "$org")],
            unit="currencyUSD",
            kind="stat",
            width=6,
        ),
        panel(
            "Tokens",
            [(f"max(vlinders_org_tokens_month_to_date{{{org}}})", "$org")],
            kind="stat",
            width=6,
        ),
        panel(
            "Requests",
            [(f"max(vlinders_org_requests_month_to_date{{{org}}})", "$org")],
            kind="stat",
            width=6,
        ),
        panel(
            "Share of platform spend",
            [
                (
                    f"max(vlinders_org_spend_month_to_date_usd{{{org}}})"
                    " / sum(max by (org) (vlinders_org_spend_month_to_date_usd))",
                    "$org",
                )
            ],
            unit="percentunit",
            kind="stat",
            width=6,
        ),
        panel(
            "Spend over the month",
            [(f"max(vlinders_org_spend_month_to_date_usd{{{org}}})", "spend")],
            unit="currencyUSD",
        ),
        panel(
            "Tokens per hour",
            [(f"max(delta(vlinders_org_tokens_month_to_date{{{org}}}[1h]))", "tokens / h")],
            description="As ingested: the month-to-date figures move when usage reaches "
            "Postgres (seconds behind the gateway, more when ingest lags).",
        ),
        row("Live (gateway; needs VLINDERS_METRICS_TENANT_LABELS=1)"),
        panel(
            "Live requests per second (tenant labels)",
            [
                (
                    f"sum by (model, status) (rate(vlinders_requests_total{{{org}}}[{RATE}]))",
                    "{{model}} {{status}}",
                ),
                (
                    f"sum by (direction) (rate(vlinders_tokens_total{{{org}}}[{RATE}]))",
                    "tokens {{direction}}",
                ),
            ],
            width=24,
            description="The gateway labels requests and tokens with the organisation only "
            "when the operator switches it on (one series per tenant and model).",
        ),
    ]
    return dashboard("vlinders-tenant", "Vlinders tenant", panels, variables)


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, board in (("platform.json", platform()), ("tenant.json", tenant())):
        (out / name).write_text(json.dumps(board, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "dashboards")
