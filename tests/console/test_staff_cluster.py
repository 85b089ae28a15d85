"""Operator console, Cluster (``/staff/cluster/``): staff only; Ray unreachable is said on the
page, never a 500; what Ray reports is shown per node and deployment; scaling goes through
``inference.scaling`` (validated, stored, audited, applied) and a failed apply is reported."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from console.pages import staff_cluster
from inference import cluster
from inference.deployment import deployment_name
from inference.models import CatalogModel, DeploymentRevision
from tenants.models import AuditEvent
from tests.factories import CatalogModelFactory, ModelAliasFactory
from tests.ray_fixtures import free_port

pytestmark = pytest.mark.django_db

PAGE = "/staff/cluster/"
LIVE = "/staff/cluster/live/"
SCALE = "/staff/cluster/scale/"
REFUSED = {role: 404 for role in ("owner", "admin", "member", "viewer", "outsider")}


@pytest.fixture(autouse=True)
def unreachable(settings):  # type: ignore[no-untyped-def]
    """Nothing listens where the dashboard and the gateway are said to be."""
    settings.VLINDERS_RAY_DASHBOARD_URL = f"http://127.0.0.1:{free_port()}"
    settings.VLINDERS_RAY_AUTH_TOKEN = "irrelevant"
    settings.VLINDERS_GATEWAY_HOST = "127.0.0.1"
    settings.VLINDERS_GATEWAY_PORT = free_port()
    return settings


@pytest.fixture
def staff_client(staff) -> Client:  # type: ignore[no-untyped-def]
    client = Client()
    client.force_login(staff)
    return client


# --- who may see it ------------------------------------------------------------------------------


@pytest.mark.parametrize("url", [PAGE, LIVE])
def test_pages_are_staff_only(assert_matrix, url) -> None:
    assert_matrix(url, {**REFUSED, "staff": 200, "anonymous": 302})


def test_scale_is_staff_only(assert_matrix) -> None:
    model = CatalogModelFactory(name="m")
    assert_matrix(
        SCALE,
        {**REFUSED, "staff": 302, "anonymous": 302},
        method="post",
        data={"model": "m", "replicas": "2"},
    )
    model.refresh_from_db()
    assert (model.min_replicas, model.max_replicas) == (2, 2)  # staff's, the only one admitted
    assert AuditEvent.objects.filter(action="catalog_model.scaled").count() == 1


def test_scale_refuses_get(staff_client) -> None:
    assert staff_client.get(SCALE).status_code == 405


# --- Ray unreachable -----------------------------------------------------------------------------


def test_unreachable_ray_is_said_on_the_page(staff_client) -> None:
    response = staff_client.get(PAGE)
    assert response.status_code == 200
    body = response.content.decode()
    assert 'id="ray-unreachable"' in body
    assert "Ray is unreachable" in body
    assert "unreachable" in response.context["overview"].ray_error
    assert 'id="scale-form"' in body  # scaling still offered: it is stored either way


def test_the_live_fragment_polls_and_says_unreachable(staff_client) -> None:
    response = staff_client.get(LIVE)
    assert response.status_code == 200
    body = response.content.decode()
    assert 'hx-get="/staff/cluster/live/"' in body
    assert 'hx-trigger="every 5s"' in body
    assert "Ray is unreachable" in body
    assert "<html" not in body  # a fragment, not a page


# --- what Ray reports, shown ---------------------------------------------------------------------


class FakeDashboard:
    """Answers as Ray 2.60's dashboard does (shapes copied from a real cluster's answers)."""

    def __init__(self, model_name: str) -> None:
        self.deployment = deployment_name(model_name)

    def get_nodes_summary(self) -> list[dict[str, Any]]:
        return [
            {
                "hostname": "worker-1",
                "ip": "10.0.0.2",
                "mem": [16 * 2**30, 12 * 2**30, 25.0, 4 * 2**30],
                "raylet": {
                    "nodeId": "w1",
                    "state": "ALIVE",
                    "isHeadNode": False,
                    "resourcesTotal": {"CPU": 16.0, "GPU": 2.0, "memory": 1.0e10},
                },
            },
            {
                "hostname": "head",
                "ip": "10.0.0.1",
                "mem": [8 * 2**30, 6 * 2**30, 25.0, 2 * 2**30],
                "raylet": {
                    "nodeId": "h",
                    "state": "ALIVE",
                    "isHeadNode": True,
                    "resourcesTotal": {"CPU": 4.0, "memory": 1.0e10},
                },
            },
        ]

    def get_resource_usage(self) -> dict[str, Any]:
        return {"w1": {"CPU": [3.0, 16.0], "GPU": [1.0, 2.0]}, "h": {"CPU": [0.5, 4.0]}}

    def get_applications(self) -> dict[str, Any]:
        return {
            "applications": {
                "vlinders": {
                    "status": "RUNNING",
                    "deployments": {
                        "Gateway": {
                            "status": "HEALTHY",
                            "replicas": [{"state": "RUNNING"}],
                            "target_num_replicas": 1,
                            "deployment_config": {
                                "autoscaling_config": {
                                    "min_replicas": 1,
                                    "max_replicas": 1,
                                    "target_ongoing_requests": 64.0,
                                }
                            },
                        }
                    },
                },
                self.deployment: {
                    "status": "RUNNING",
                    "deployments": {
                        self.deployment: {
                            "status": "UPSCALING",
                            "message": "Upscaling from 1 to 3 replicas.",
                            "replicas": [{"state": "RUNNING"}, {"state": "STARTING"}],
                            "target_num_replicas": 3,
                            "deployment_config": {
                                "autoscaling_config": {
                                    "min_replicas": 1,
                                    "max_replicas": 4,
                                    "target_ongoing_requests": 16.0,
                                }
                            },
                        }
                    },
                },
            }
        }


GATEWAY_METRICS = """\
# HELP vlinders_requests_in_flight Requests being served now.
# TYPE vlinders_requests_in_flight gauge
vlinders_requests_in_flight{model="big"} 5.0
vlinders_requests_in_flight{model="big-alias"} 2.0
vlinders_requests_in_flight{model="other"} 1.0
"""


def test_nodes_and_deployments_as_ray_reports_them(staff_client, monkeypatch) -> None:
    model = CatalogModelFactory(name="big")
    ModelAliasFactory(name="big-alias", target=model)
    fake = FakeDashboard("big")
    monkeypatch.setattr(
        staff_cluster, "cluster_overview", lambda: cluster.cluster_overview(client=fake)
    )
    monkeypatch.setattr(cluster, "_fetch_text", lambda url, token="": GATEWAY_METRICS)

    response = staff_client.get(LIVE)
    assert response.status_code == 200
    overview = response.context["overview"]
    head, worker = overview.nodes  # the head first
    assert (head.hostname, head.head, head.cpus.used, head.cpus.total) == ("head", True, 0.5, 4.0)
    assert (worker.gpus.used, worker.gpus.total) == (1.0, 2.0)
    assert (worker.memory.used, worker.memory.total) == (4 * 2**30, 16 * 2**30)
    totals = response.context["totals"]
    assert (totals["cpus"].used, totals["cpus"].total) == (3.5, 20.0)

    gateway, big = overview.deployments
    assert gateway.gateway
    assert gateway.ongoing == 8.0
    assert big.model == "big"
    assert big.replicas == {"RUNNING": 1, "STARTING": 1}
    assert big.target == 3
    assert big.autoscaling == cluster.Autoscaling(1, 4, 16.0)
    assert big.ongoing == 7.0  # the alias counts for its target
    assert big.queued is None  # no node gave a metrics port: unknown, not 0

    body = response.content.decode()
    assert "worker-1" in body
    assert "20 / " not in body
    assert "1 starting" in body
    assert "1\u20134" in body  # min to max, with an en dash
    assert "Upscaling from 1 to 3 replicas." in body
    assert "?model=big#scale" in body


def test_unreadable_gateway_metrics_leave_the_rest_shown(staff_client, monkeypatch) -> None:
    CatalogModelFactory(name="big")
    fake = FakeDashboard("big")
    monkeypatch.setattr(
        staff_cluster, "cluster_overview", lambda: cluster.cluster_overview(client=fake)
    )
    response = staff_client.get(PAGE)
    assert response.status_code == 200
    body = response.content.decode()
    assert 'id="metrics-error"' in body
    assert "worker-1" in body
    assert response.context["overview"].deployments[1].ongoing is None


def test_metrics_parsing() -> None:
    assert cluster.in_flight_by_model(GATEWAY_METRICS, {"big-alias": "big"}) == {
        "big": 7.0,
        "other": 1.0,
    }
    ray_text = (
        "# TYPE ray_serve_deployment_queued_queries gauge\n"
        'ray_serve_deployment_queued_queries{application="a",deployment="d"} 3.0\n'
    )
    assert cluster.queued_by_deployment([ray_text, ray_text]) == {"d": 6.0}


class PrefixAffinityDashboard(FakeDashboard):
    """A ``prefix_affinity`` model's application as Serve reports it: the model server behind
    the stub ingress (``inference.serving.routers.with_router_ingress``), two deployments."""

    def __init__(self, model_name: str, ingress_status: str = "HEALTHY") -> None:
        super().__init__(model_name)
        self.ingress_status = ingress_status

    def get_applications(self) -> dict[str, Any]:
        details = super().get_applications()
        healthy = self.ingress_status == "HEALTHY"
        app = details["applications"][self.deployment]
        app["deployments"][cluster.ROUTER_INGRESS_DEPLOYMENT] = {
            "status": self.ingress_status,
            "message": "" if healthy else "The replica failed to start.",
            "replicas": [{"state": "RUNNING" if healthy else "STARTING"}],
            "target_num_replicas": 1,
            "deployment_config": {"num_replicas": 1},
        }
        return details


def test_the_stub_ingress_is_the_models_router_ingress_not_a_deployment(
    staff_client, monkeypatch
) -> None:
    CatalogModelFactory(name="big", request_router="prefix_affinity")
    fake = PrefixAffinityDashboard("big")
    monkeypatch.setattr(
        staff_cluster, "cluster_overview", lambda: cluster.cluster_overview(client=fake)
    )
    monkeypatch.setattr(cluster, "_fetch_text", lambda url, token="": GATEWAY_METRICS)

    response = staff_client.get(LIVE)
    gateway, big = response.context["overview"].deployments  # no third row for the stub
    assert gateway.router_ingress is None
    assert (big.model, big.deployment, big.running, big.target) == ("big", fake.deployment, 1, 3)
    assert big.autoscaling == cluster.Autoscaling(1, 4, 16.0)  # the server's, not the stub's
    assert big.router_ingress == cluster.RouterIngressInfo(
        deployment="RouterIngress", status="HEALTHY", message="", replicas={"RUNNING": 1}
    )
    body = response.content.decode()
    assert 'data-deployment="RouterIngress"' not in body
    row = body[body.index(f'data-deployment="{fake.deployment}"') :].split("</tr>")[0]
    assert "behind a stub router ingress" in row
    assert "healthy" not in row.split("</th>")[0]  # a healthy stub: no status of its own


def test_an_unhealthy_router_ingress_is_said_on_its_models_row(staff_client, monkeypatch) -> None:
    CatalogModelFactory(name="big", request_router="prefix_affinity")
    fake = PrefixAffinityDashboard("big", ingress_status="UNHEALTHY")
    monkeypatch.setattr(
        staff_cluster, "cluster_overview", lambda: cluster.cluster_overview(client=fake)
    )
    body = staff_client.get(LIVE).content.decode()
    row = body[body.index(f'data-deployment="{fake.deployment}"') :].split("</tr>")[0]
    assert (
        "router ingress (prefix-affinity routing) is <strong>unhealthy</strong>, 0 running: " in row
    )
    assert "The replica failed to start." in row


def test_a_lone_deployment_named_like_the_stub_is_listed() -> None:
    """Only a stub beside its server is folded: an application of that one deployment lists it."""
    details = {
        "applications": {
            "lone": {"deployments": {"RouterIngress": {"status": "HEALTHY", "replicas": []}}}
        }
    }
    (row,) = cluster._deployments(details, {})
    assert (row.deployment, row.router_ingress) == ("RouterIngress", None)


# --- scaling -------------------------------------------------------------------------------------


def test_scale_with_unreachable_ray_stores_and_reports_the_failed_apply(staff_client) -> None:
    model = CatalogModelFactory(name="meta/llama", max_replicas=1)
    response = staff_client.post(
        SCALE, {"model": "meta/llama", "min_replicas": "1", "max_replicas": "4"}, follow=True
    )
    assert response.status_code == 200
    assert response.redirect_chain[-1][0] == "/staff/cluster/?model=meta%2Fllama"
    model.refresh_from_db()
    assert (model.min_replicas, model.max_replicas, model.scale_to_zero) == (1, 4, False)
    revision = DeploymentRevision.objects.get()
    assert revision.outcome == DeploymentRevision.Outcome.FAILED
    assert "unreachable" in revision.error
    body = response.content.decode()
    assert "the apply to Ray failed" in body
    assert "meta/llama is stored with 1 to 4 replicas" in body
    event = AuditEvent.objects.get(action="catalog_model.scaled")
    assert event.organization is None
    assert event.actor_username == "staff"
    assert event.before == {
        "name": "meta/llama",
        "min_replicas": 1,
        "max_replicas": 1,
        "scale_to_zero": False,
    }
    assert event.after["max_replicas"] == 4
    # The form preselects the model after the redirect.
    assert response.context["form"].initial["model"] == "meta/llama"


def test_scale_to_zero_is_said_twice(staff_client) -> None:
    model = CatalogModelFactory(name="m", max_replicas=2)
    response = staff_client.post(
        SCALE, {"model": "m", "min_replicas": "0", "max_replicas": "2", "scale_to_zero": "on"}
    )
    assert response.status_code == 302
    model.refresh_from_db()
    assert (model.min_replicas, model.scale_to_zero) == (0, True)


@pytest.mark.parametrize(
    ("data", "field", "message"),
    [
        (
            {"min_replicas": "3", "max_replicas": "2"},
            "min_replicas",
            "Must not exceed max_replicas",
        ),
        ({"min_replicas": "0", "max_replicas": "2"}, "min_replicas", "set scale_to_zero"),
        ({"replicas": "2", "max_replicas": "3"}, "replicas", "not both"),
        ({"replicas": "0"}, "replicas", "greater than or equal to 1"),
        ({"replicas": "two"}, "replicas", "whole number"),
        ({"min_replicas": "1"}, "max_replicas", "Required"),
        ({"model": "no-such-model", "replicas": "1"}, "model", "Select a valid choice"),
        ({"replicas": "1", "scale_to_zero": "on"}, "scale_to_zero", "never scales to zero"),
    ],
)
def test_scale_form_errors_are_400_next_to_the_field(staff_client, data, field, message) -> None:
    CatalogModelFactory(name="m", min_replicas=1, max_replicas=1)
    response = staff_client.post(SCALE, {"model": "m", **data})
    assert response.status_code == 400
    form = response.context["form"]
    assert field in form.errors, form.errors
    assert any(message in error for error in form.errors[field]), form.errors
    assert message in response.content.decode().replace("&#x27;", "'")
    assert CatalogModel.objects.values_list("min_replicas", "max_replicas").get() == (1, 1)
    assert not DeploymentRevision.objects.exists()
    assert not AuditEvent.objects.exists()
