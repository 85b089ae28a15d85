"""What the Ray cluster runs now, for the operator console's Cluster page (reads only).

One call, :func:`cluster_overview`, gathers from the live cluster:

- **nodes** from Ray's dashboard (``GET /nodes?view=summary``: host, IP, head or worker, state,
  physical memory used and total, Ray's logical ``resourcesTotal``) and the autoscaler's load
  report (``GET /api/cluster_status``: the logical CPUs and GPUs in use per node);
- **deployments** from ``GET /api/serve/applications/``: per Serve deployment its status, its
  replicas by state, the target count Ray is scaling to and the autoscaling settings of the
  config Ray applied (``deployment_config``), named by the catalog model it serves. A
  ``prefix_affinity`` model's application also holds a stub ingress deployment in front of its
  server (``inference/serving/routers.py``, ``with_router_ingress``): it is not listed as a
  deployment of its own but folded into its model's row (``DeploymentInfo.router_ingress``), so
  the model shows once, with its replicas, and the stub's health where it is not healthy;
- **ongoing requests** per model from the gateway's Prometheus ``/metrics``
  (``vlinders_requests_in_flight``, labelled with the public name asked for: an alias counts for
  its target), read with ``VLINDERS_METRICS_TOKEN``;
- **queued requests** per deployment from Serve's own metric
  ``ray_serve_deployment_queued_queries`` (requests waiting in a caller's router for a replica),
  read from each alive node's metrics export port.

Nothing here raises for an unreachable or misbehaving source: the overview carries an error
message per source instead (``ray_error``, ``metrics_error``), so the page always renders and
says what it could not read. Every read has a short timeout: the page polls.
"""

from __future__ import annotations

import logging
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from django.conf import settings
from prometheus_client.parser import text_string_to_metric_families

from inference.deployment import APP_NAME, deployment_name
from inference.models import CatalogModel, ModelAlias
from inference.ray_client import RayDashboardClient, RayDashboardError
from inference.serving.spec import ROUTER_INGRESS_DEPLOYMENT

logger = logging.getLogger(__name__)

# The page polls: each source gets this long before it is reported unreachable.
READ_TIMEOUT_S = 5.0
IN_FLIGHT_METRIC = "vlinders_requests_in_flight"
QUEUED_METRIC = "ray_serve_deployment_queued_queries"
# Replica states as Serve names them, in the order the page shows them.
REPLICA_STATES = ("RUNNING", "STARTING", "UPDATING", "RECOVERING", "STOPPING", "PENDING_MIGRATION")


@dataclass(frozen=True)
class Amount:
    """A resource in use and in total (``used`` is ``None`` when Ray did not report it)."""

    used: float | None
    total: float

    @property
    def percent(self) -> int | None:
        if self.used is None or not self.total:
            return None
        return round(100 * self.used / self.total)


@dataclass(frozen=True)
class NodeInfo:
    node_id: str
    hostname: str
    ip: str
    head: bool
    state: str  # ALIVE or DEAD
    cpus: Amount  # Ray's logical CPUs
    gpus: Amount  # Ray's logical GPUs
    memory: Amount  # the host's physical memory, bytes
    metrics_port: int | None = None


@dataclass(frozen=True)
class Autoscaling:
    """The scaling Ray applied to a deployment: ``fixed`` when min and max are the same count."""

    min_replicas: int
    max_replicas: int
    target_ongoing_requests: float | None

    @property
    def fixed(self) -> bool:
        return self.min_replicas == self.max_replicas


@dataclass(frozen=True)
class RouterIngressInfo:
    """The stub ingress in front of a model server that has its own request router: one replica,
    no CPU, never called (requests go to the server's handle); only its health matters, since the
    model's application is not running without it."""

    deployment: str
    status: str
    message: str
    replicas: dict[str, int]

    @property
    def running(self) -> int:
        return self.replicas.get("RUNNING", 0)

    @property
    def healthy(self) -> bool:
        return self.status == "HEALTHY"


@dataclass(frozen=True)
class DeploymentInfo:
    application: str
    deployment: str
    model: str  # the catalog model's name; "" for the gateway or a deployment not in the catalog
    status: str
    message: str
    replicas: dict[str, int]  # Serve replica state -> count
    target: int
    autoscaling: Autoscaling | None
    ongoing: float | None = None
    queued: float | None = None
    # The model's router ingress (``request_router`` ``prefix_affinity``); None without one.
    router_ingress: RouterIngressInfo | None = None

    @property
    def running(self) -> int:
        return self.replicas.get("RUNNING", 0)

    @property
    def gateway(self) -> bool:
        return self.application == APP_NAME


@dataclass
class ClusterOverview:
    nodes: list[NodeInfo] = field(default_factory=list)
    deployments: list[DeploymentInfo] = field(default_factory=list)
    ray_error: str = ""  # the dashboard could not be read: nodes and deployments are unknown
    metrics_error: str = ""  # ongoing/queued figures could not be read (the rest is shown)

    @property
    def reachable(self) -> bool:
        return not self.ray_error

    def totals(self) -> dict[str, Amount]:
        """CPUs, GPUs and memory summed over the alive nodes."""
        alive = [node for node in self.nodes if node.state == "ALIVE"]
        return {
            name: _sum(getattr(node, name) for node in alive) for name in ("cpus", "gpus", "memory")
        }


def _sum(amounts: Iterable[Amount]) -> Amount:
    items = list(amounts)
    used = [a.used for a in items if a.used is not None]
    return Amount(used=sum(used) if used else None, total=sum(a.total for a in items))


def as_dict(value: Any) -> dict[str, Any]:
    """``value`` if it is a JSON object, else ``{}`` (Ray's answers are read defensively)."""
    return value if isinstance(value, dict) else {}


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def _nodes(summary: list[dict[str, Any]], usage: dict[str, Any]) -> list[NodeInfo]:
    nodes = []
    for entry in summary:
        raylet = as_dict(entry.get("raylet"))
        node_id = str(raylet.get("nodeId") or "")
        totals = as_dict(raylet.get("resourcesTotal"))
        in_use = as_dict(usage.get(node_id))

        def logical(name: str, totals: dict[str, Any] = totals, in_use: Any = in_use) -> Amount:
            pair = in_use.get(name)
            total = _float(totals.get(name))
            if isinstance(pair, list) and len(pair) == 2:
                return Amount(used=_float(pair[0]), total=total or _float(pair[1]))
            return Amount(used=None if total else 0.0, total=total)

        mem = entry.get("mem")  # [total, available, percent, used] of the host
        memory = (
            Amount(used=_float(mem[3]), total=_float(mem[0]))
            if isinstance(mem, list) and len(mem) >= 4
            else Amount(used=None, total=0.0)
        )
        port = raylet.get("metricsExportPort")
        nodes.append(
            NodeInfo(
                node_id=node_id,
                hostname=str(entry.get("hostname") or raylet.get("nodeManagerHostname") or ""),
                ip=str(entry.get("ip") or raylet.get("nodeManagerAddress") or ""),
                head=bool(raylet.get("isHeadNode")),
                state=str(raylet.get("state") or "UNKNOWN"),
                cpus=logical("CPU"),
                gpus=logical("GPU"),
                memory=memory,
                metrics_port=int(port) if isinstance(port, int) and port > 0 else None,
            )
        )
    # Head first, then alive before dead, then by host.
    return sorted(nodes, key=lambda n: (not n.head, n.state != "ALIVE", n.hostname, n.ip))


def _autoscaling(deployment: dict[str, Any]) -> Autoscaling | None:
    config = deployment.get("deployment_config")
    if not isinstance(config, dict):
        return None
    autoscaling = config.get("autoscaling_config")
    if isinstance(autoscaling, dict) and autoscaling.get("max_replicas") is not None:
        target = autoscaling.get("target_ongoing_requests")
        return Autoscaling(
            min_replicas=int(autoscaling.get("min_replicas") or 0),
            max_replicas=int(autoscaling["max_replicas"]),
            target_ongoing_requests=_float(target) if target is not None else None,
        )
    if isinstance(config.get("num_replicas"), int):
        count = int(config["num_replicas"])
        return Autoscaling(min_replicas=count, max_replicas=count, target_ongoing_requests=None)
    return None


def _replica_counts(deployment: dict[str, Any]) -> dict[str, int]:
    replicas: dict[str, int] = defaultdict(int)
    for replica in deployment.get("replicas") or []:
        if isinstance(replica, dict):
            replicas[str(replica.get("state") or "UNKNOWN")] += 1
    return dict(replicas)


def _deployments(details: dict[str, Any], names: dict[str, str]) -> list[DeploymentInfo]:
    rows = []
    apps = as_dict(details.get("applications"))
    for app_name, app in sorted(apps.items()):
        if not isinstance(app, dict):
            continue
        deployments = {
            str(name): deployment
            for name, deployment in as_dict(app.get("deployments")).items()
            if isinstance(deployment, dict)
        }
        # A model application with a router ingress: the stub goes with its server (the
        # application's other deployment, named like the application), not on a row of its own.
        ingress: RouterIngressInfo | None = None
        stub = deployments.get(ROUTER_INGRESS_DEPLOYMENT)
        if app_name != APP_NAME and stub is not None and len(deployments) > 1:
            del deployments[ROUTER_INGRESS_DEPLOYMENT]
            ingress = RouterIngressInfo(
                deployment=ROUTER_INGRESS_DEPLOYMENT,
                status=str(stub.get("status") or ""),
                message=str(stub.get("message") or ""),
                replicas=_replica_counts(stub),
            )
        server = str(app_name) if str(app_name) in deployments else min(deployments, default="")
        for name, deployment in sorted(deployments.items()):
            rows.append(
                DeploymentInfo(
                    application=str(app_name),
                    deployment=name,
                    model=names.get(name, ""),
                    status=str(deployment.get("status") or app.get("status") or ""),
                    message=str(deployment.get("message") or app.get("message") or ""),
                    replicas=_replica_counts(deployment),
                    target=int(deployment.get("target_num_replicas") or 0),
                    autoscaling=_autoscaling(deployment),
                    router_ingress=ingress if name == server else None,
                )
            )
    # The gateway first, then the models by name.
    return sorted(rows, key=lambda d: (not d.gateway, d.model or d.deployment))


def gateway_metrics_url() -> str:
    """The gateway's ``/metrics`` where the control plane reaches it (a wildcard host as
    127.0.0.1)."""
    host = str(settings.VLINDERS_GATEWAY_HOST)
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 (names compared, nothing bound)
        host = "127.0.0.1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{settings.VLINDERS_GATEWAY_PORT}/metrics"


def _fetch_text(url: str, *, token: str = "") -> str:
    headers = {"Accept": "text/plain"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 (http URLs we build)
    with urllib.request.urlopen(request, timeout=READ_TIMEOUT_S) as response:  # noqa: S310
        return str(response.read().decode("utf-8", "replace"))


def _samples(text: str, metric: str) -> list[tuple[dict[str, str], float]]:
    """``(labels, value)`` of every sample of ``metric`` (a gauge) in Prometheus text."""
    found = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == metric:
                found.append((dict(sample.labels), float(sample.value)))
    return found


def in_flight_by_model(text: str, aliases: dict[str, str]) -> dict[str, float]:
    """Requests in flight per catalog model name, from the gateway's metrics text."""
    totals: dict[str, float] = defaultdict(float)
    for labels, value in _samples(text, IN_FLIGHT_METRIC):
        name = labels.get("model", "")
        totals[aliases.get(name, name)] += value
    return dict(totals)


def queued_by_deployment(texts: Iterable[str]) -> dict[str, float]:
    """Requests queued per Serve deployment, summed over the nodes' metrics texts."""
    totals: dict[str, float] = defaultdict(float)
    for text in texts:
        for labels, value in _samples(text, QUEUED_METRIC):
            totals[labels.get("deployment", "")] += value
    return dict(totals)


def _ongoing_of(row: DeploymentInfo, ongoing: dict[str, float] | None) -> float | None:
    """A model's requests in flight; the gateway's are all of them."""
    if ongoing is None:
        return None
    if row.gateway:
        return sum(ongoing.values())
    return ongoing.get(row.model, 0.0) if row.model else None


def _with_load(
    overview: ClusterOverview, aliases: dict[str, str], nodes: list[NodeInfo]
) -> ClusterOverview:
    """The deployments with their ongoing and queued requests, where those can be read."""
    errors = []
    ongoing: dict[str, float] | None = None
    try:
        text = _fetch_text(gateway_metrics_url(), token=str(settings.VLINDERS_METRICS_TOKEN or ""))
        ongoing = in_flight_by_model(text, aliases)
    except (OSError, urllib.error.URLError, ValueError) as exc:
        errors.append(f"The gateway's metrics at {gateway_metrics_url()} could not be read: {exc}")
    texts = []
    for node in nodes:
        if node.state != "ALIVE" or node.metrics_port is None or not node.ip:
            continue
        try:
            texts.append(_fetch_text(f"http://{node.ip}:{node.metrics_port}/metrics"))
        except (OSError, urllib.error.URLError, ValueError) as exc:
            errors.append(
                f"Ray's metrics of node {node.hostname or node.ip} could not be read: {exc}"
            )
    queued = queued_by_deployment(texts) if texts else None
    overview.deployments = [
        replace(
            row,
            ongoing=_ongoing_of(row, ongoing),
            queued=queued.get(row.deployment, 0.0) if queued is not None else None,
        )
        for row in overview.deployments
    ]
    overview.metrics_error = " ".join(errors)
    return overview


def cluster_overview(*, client: RayDashboardClient | None = None) -> ClusterOverview:
    """The cluster as Ray reports it now; never raises for an unreachable source."""
    client = client or RayDashboardClient.from_settings(timeout=READ_TIMEOUT_S)
    overview = ClusterOverview()
    try:
        summary = client.get_nodes_summary()
        details = client.get_applications()
    except RayDashboardError as exc:
        overview.ray_error = str(exc)
        logger.info("Cluster overview: %s", exc)
        return overview
    try:
        usage = client.get_resource_usage()
    except RayDashboardError as exc:  # the figures in use are then unknown, totals still shown
        logger.info("Cluster overview, resource usage: %s", exc)
        usage = {}
    models = list(CatalogModel.objects.values_list("name", flat=True))
    names = {deployment_name(name): name for name in models}
    aliases = dict(ModelAlias.objects.values_list("name", "target__name"))
    overview.nodes = _nodes(summary, usage)
    overview.deployments = _deployments(details, names)
    return _with_load(overview, aliases, overview.nodes)
