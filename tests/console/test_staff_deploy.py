"""The operator console's Deploy page (``console.pages.staff_deploy``, ``inference.rollouts``):
staff only; an apply against an unreachable dashboard is recorded failed and the page says why;
the live rollout answers (and keeps polling) whatever Ray does; the revision history shows what
changed between revisions; a rollback asks first, then re-applies the old config.

Ray itself is not needed here (tests/inference/test_staff_deploy_ray.py deploys for real): the
dashboard is either a port where nothing listens, or, for the rollout partial's rendering of
Ray's answers, a stubbed ``get_applications`` returning Ray's documented shape.
"""

from __future__ import annotations

import copy
from decimal import Decimal
from typing import Any

import pytest
from django.test import Client

from inference import rollouts
from inference.deployment import (
    APP_NAME,
    GATEWAY_DEPLOYMENT,
    config_revision,
    deployment_name,
    render_serve_config,
    sha256_hex,
)
from inference.models import DeploymentRevision
from inference.ray_client import RayDashboardClient
from tenants.models import AuditEvent
from tests.factories import CatalogModelFactory, UserFactory
from tests.ray_fixtures import free_port

pytestmark = pytest.mark.django_db

PAGE = "/staff/deploy/"
APPLY = "/staff/deploy/apply/"
ROLLOUT = "/staff/deploy/rollout/"
NOBODY_HERE = {
    "owner": 404,
    "admin": 404,
    "member": 404,
    "viewer": 404,
    "outsider": 404,
    "anonymous": 302,
}


@pytest.fixture
def unreachable(settings):  # type: ignore[no-untyped-def]
    """A dashboard URL where nothing listens."""
    settings.VLINDERS_RAY_DASHBOARD_URL = f"http://127.0.0.1:{free_port()}"
    settings.VLINDERS_RAY_AUTH_TOKEN = "irrelevant"
    return settings


@pytest.fixture
def staff_client(staff) -> Client:  # type: ignore[no-untyped-def]
    client = Client()
    client.force_login(staff)
    return client


def record(config: dict[str, Any], outcome: str = "applied", **extra: Any) -> DeploymentRevision:
    """A revision as ``deployment_apply`` records one."""
    return DeploymentRevision.objects.create(
        revision=config_revision(config),
        config_hash=sha256_hex(config),
        config=copy.deepcopy(config),
        outcome=outcome,
        **extra,
    )


def rollback_url(revision: DeploymentRevision) -> str:
    return f"/staff/deploy/revisions/{revision.pk}/rollback/"


@pytest.fixture
def two_revisions(db):  # type: ignore[no-untyped-def]
    """Revision 1: ``syn-a``. Revision 2: ``syn-a`` with a new output price and scaling, and
    ``syn-b`` added. Both applied; the second is what Ray runs."""
    deployer = UserFactory(username="deployer", is_staff=True)
    model = CatalogModelFactory(name="syn-a", price_output_per_mtok=Decimal("2"))
    first = record(render_serve_config(), applied_by=deployer)
    model.price_output_per_mtok = Decimal("3.5")
    model.max_replicas = 3
    model.save()
    CatalogModelFactory(name="syn-b")
    second = record(render_serve_config(), applied_by=deployer)
    return first, second


# --- who may see it ----------------------------------------------------------------------------


def test_staff_only(assert_matrix, unreachable, two_revisions) -> None:
    first, _ = two_revisions
    assert_matrix(PAGE, {**NOBODY_HERE, "staff": 200})
    assert_matrix(ROLLOUT, {**NOBODY_HERE, "staff": 200})
    assert_matrix(rollback_url(first), {**NOBODY_HERE, "staff": 200})
    before = DeploymentRevision.objects.count()
    # Only staff's POSTs act (each an apply against the unreachable dashboard: recorded).
    assert_matrix(APPLY, {**NOBODY_HERE, "staff": 302}, method="post")
    assert_matrix(
        rollback_url(first), {**NOBODY_HERE, "staff": 302}, method="post", data={"confirm": "yes"}
    )
    assert DeploymentRevision.objects.count() == before + 2
    assert set(DeploymentRevision.objects.values_list("applied_by__username", flat=True)) >= {
        "staff"
    }


def test_apply_is_a_post(staff_client) -> None:
    assert staff_client.get(APPLY).status_code == 405


# --- apply -------------------------------------------------------------------------------------


def test_apply_against_an_unreachable_dashboard_is_recorded_failed_and_says_why(
    staff_client, staff, unreachable
) -> None:
    CatalogModelFactory(name="syn-a")
    response = staff_client.post(APPLY, follow=True)
    assert response.status_code == 200
    (revision,) = DeploymentRevision.objects.all()
    assert revision.outcome == "failed"
    assert revision.applied_by == staff
    assert revision.config == render_serve_config()
    assert "unreachable" in revision.error
    text = response.content.decode()
    assert "Apply failed" in text
    assert "Ray keeps serving the previous one" in text
    assert 'id="latest-error"' in text
    assert revision.error in text.replace("&#x27;", "'")
    # The live view says Ray cannot be asked, and keeps asking.
    assert "Ray dashboard unreachable:" in text


def test_a_refused_config_shows_rays_reason(staff_client, monkeypatch) -> None:
    from inference.ray_client import RayConfigRefused

    def refuse(self: RayDashboardClient, config: dict[str, Any]) -> None:
        raise RayConfigRefused("Ray refused the config: max_ongoing_requests must be > 0")

    monkeypatch.setattr(RayDashboardClient, "put_applications", refuse)
    monkeypatch.setattr(RayDashboardClient, "get_applications", lambda self: {"applications": {}})
    CatalogModelFactory(name="syn-a")
    text = staff_client.post(APPLY, follow=True).content.decode()
    assert "Ray refused the config: max_ongoing_requests must be &gt; 0" in text
    assert DeploymentRevision.objects.get().outcome == "failed"


# --- the live rollout --------------------------------------------------------------------------


def test_rollout_partial_never_fails_when_ray_is_unreachable(staff_client, unreachable) -> None:
    CatalogModelFactory(name="syn-a")
    record(render_serve_config())
    response = staff_client.get(ROLLOUT)
    assert response.status_code == 200
    text = response.content.decode()
    assert "Ray dashboard unreachable:" in text
    assert 'hx-trigger="every 2s"' in text  # still polling


def ray_details(
    config: dict[str, Any], replica_states: list[str], status: str = "RUNNING"
) -> dict[str, Any]:
    """``GET /api/serve/applications/`` as Ray answers it for ``config``: every model with the
    given replicas, the gateway running the config's revision."""
    apps: dict[str, Any] = {}
    for app in config["applications"]:
        name = app["name"]
        deployment = GATEWAY_DEPLOYMENT if name == APP_NAME else name
        running = all(state == "RUNNING" for state in replica_states)
        apps[name] = {
            "name": name,
            "status": status if running else "DEPLOYING",
            "message": "",
            "deployed_app_config": app,
            "deployments": {
                deployment: {
                    "name": deployment,
                    "status": "HEALTHY" if running else "UPDATING",
                    "message": "" if running else "Deploying: waiting for replicas to start.",
                    "target_num_replicas": len(replica_states),
                    "replicas": [
                        {"replica_id": f"{name}-{i}", "state": state}
                        for i, state in enumerate(replica_states)
                    ],
                }
            },
        }
    return {"applications": apps}


def test_rollout_polls_until_settled_then_stops(staff_client, monkeypatch) -> None:
    CatalogModelFactory(name="syn-a")
    config = render_serve_config()
    record(config)
    answer: dict[str, Any] = ray_details(config, ["RUNNING", "STARTING"])
    monkeypatch.setattr(RayDashboardClient, "get_applications", lambda self: answer)

    text = staff_client.get(ROLLOUT).content.decode()
    assert 'hx-trigger="every 1s"' in text
    assert 'data-settled="no"' in text
    assert 'data-model="syn-a" data-state="starting"' in text
    assert "1 / 2" in text
    assert "Deploying: waiting for replicas to start." in text

    answer.update(ray_details(config, ["RUNNING", "RUNNING"]))
    text = staff_client.get(ROLLOUT).content.decode()
    assert "hx-trigger" not in text
    assert 'data-settled="yes"' in text
    assert 'data-model="syn-a" data-state="running"' in text
    assert "2 / 2" in text


def test_rollout_shows_a_failed_model_with_rays_message(staff_client, monkeypatch) -> None:
    CatalogModelFactory(name="syn-a")
    config = render_serve_config()
    record(config)
    answer = ray_details(config, ["RUNNING"])
    app = answer["applications"][deployment_name("syn-a")]
    app["status"] = "DEPLOY_FAILED"
    app["message"] = "Traceback: ValueError: no such engine argument 'bogus'"
    monkeypatch.setattr(RayDashboardClient, "get_applications", lambda self: answer)
    text = staff_client.get(ROLLOUT).content.decode()
    assert 'data-model="syn-a" data-state="failed"' in text
    assert "no such engine argument &#x27;bogus&#x27;" in text
    assert "settled with failures" in text
    assert "hx-trigger" not in text


def test_rollout_waits_for_the_gateway_to_carry_the_revision(staff_client, monkeypatch) -> None:
    model = CatalogModelFactory(name="syn-a")
    old = render_serve_config()
    model.price_input_per_mtok = Decimal("7")
    model.save()
    record(old)
    new = record(render_serve_config())
    answer = ray_details(old, ["RUNNING"])
    monkeypatch.setattr(RayDashboardClient, "get_applications", lambda self: answer)
    text = staff_client.get(ROLLOUT).content.decode()
    assert f"Ray is switching to revision #{new.pk}" in text
    assert "hx-trigger" in text


# --- history and what changed ------------------------------------------------------------------


def test_history_shows_who_when_outcome_and_what_changed(
    staff_client, unreachable, two_revisions
) -> None:
    first, second = two_revisions
    failed = record(second.config, outcome="failed", error="Ray refused the config: nope")
    text = staff_client.get(PAGE).content.decode()
    for revision in (first, second, failed):
        assert f'id="revision-{revision.pk}"' in text
    assert "deployer" in text
    assert "Ray refused the config: nope" in text
    # Revision 2 against revision 1: syn-b added, syn-a's price and scaling changed in place.
    assert "1 added (syn-b); 1 changed (syn-a)" in text
    price = "<code>price_output_per_mtok</code></th><td>2.000000</td><td>3.500000</td>"
    assert f'<tr data-field="price_output_per_mtok"><th scope="row">{price}' in text
    assert 'data-field="autoscaling_config.max_replicas"' in text
    assert "(in place, no restart)" in text
    # The failed revision re-sent revision 2's config: no change, and said so.
    assert f"Same config as revision #{second.pk}" in text
    # Only revision 1 can be rolled back to (2 runs now; the failed one never ran).
    assert rollback_url(first) in text
    assert rollback_url(second) not in text
    assert rollback_url(failed) not in text


def test_diff_marks_restarts_removals_and_masks_credentials() -> None:
    CatalogModelFactory(name="syn-a", engine_args={"ttft_ms": 0})
    CatalogModelFactory(name="syn-gone")
    before = render_serve_config()
    after = copy.deepcopy(before)
    after["applications"] = [
        a for a in after["applications"] if a["name"] != deployment_name("syn-gone")
    ]
    gateway = next(a for a in after["applications"] if a["name"] == APP_NAME)
    routes = gateway["deployments"][0]["user_config"]["models"]
    gateway["deployments"][0]["user_config"]["models"] = [
        r for r in routes if r["name"] != "syn-gone"
    ]
    gateway["args"]["broker_url"] = "redis://:s3cret@broker.internal:6379/0"
    model_app = next(a for a in after["applications"] if a["name"] == deployment_name("syn-a"))
    model_app["args"]["engine_args"]["ttft_ms"] = 25

    diff = rollouts.config_diff(before, after)
    assert diff.removed == ["syn-gone"]
    assert diff.added == []
    (change,) = diff.changed
    assert change.name == "syn-a"
    assert change.restarts
    assert [(c.name, c.before, c.after, c.restarts) for c in change.changes] == [
        ("engine_args.ttft_ms", "0", "25", True)
    ]
    (platform,) = diff.platform
    assert platform.name == "gateway.broker_url"
    assert platform.after == "redis://:***@broker.internal:6379/0"
    assert "s3cret" not in repr(diff)
    assert rollouts.config_diff(before, before).empty
    assert rollouts.config_diff(None, before).added == ["syn-a", "syn-gone"]


# --- rollback ----------------------------------------------------------------------------------


def test_rollback_asks_first(staff_client, unreachable, two_revisions) -> None:
    first, second = two_revisions
    response = staff_client.get(rollback_url(first))
    text = response.content.decode()
    assert response.status_code == 200
    assert f"Roll back to revision #{first.pk}?" in text
    assert f"from what runs now (revision #{second.pk})" in text
    assert "Models removed:" in text
    assert "syn-b" in text  # going back removes syn-b
    assert 'name="confirm" value="yes"' in text
    # A POST without the confirmation only asks again.
    response = staff_client.post(rollback_url(first))
    assert response.status_code == 200
    assert 'id="rollback-form"' in response.content.decode()
    assert DeploymentRevision.objects.count() == 2


def test_rollback_reapplies_the_old_config_and_records_a_failure(
    staff_client, staff, unreachable, two_revisions
) -> None:
    first, _ = two_revisions
    response = staff_client.post(rollback_url(first), {"confirm": "yes"}, follow=True)
    assert response.status_code == 200
    newest = DeploymentRevision.objects.first()
    assert newest is not None
    assert newest.pk != first.pk
    assert newest.config == first.config
    assert newest.revision == first.revision
    assert newest.applied_by == staff
    assert newest.outcome == "failed"
    assert "unreachable" in newest.error
    text = response.content.decode()
    assert f"Rollback to revision #{first.pk} failed" in text
    assert "unreachable" in text


def test_rollback_applies_when_ray_accepts(staff_client, staff, monkeypatch, two_revisions) -> None:
    first, second = two_revisions
    sent: list[dict[str, Any]] = []
    monkeypatch.setattr(
        RayDashboardClient, "put_applications", lambda self, config: sent.append(config)
    )
    monkeypatch.setattr(
        RayDashboardClient, "get_applications", lambda self: ray_details(first.config, ["RUNNING"])
    )
    text = staff_client.post(rollback_url(first), {"confirm": "yes"}, follow=True).content.decode()
    assert sent == [first.config]
    newest = DeploymentRevision.objects.first()
    assert newest is not None
    assert newest.outcome == "applied"
    assert newest.applied_by == staff
    assert f"Rollback to revision #{first.pk}: revision #{newest.pk}" in text
    event = AuditEvent.objects.get(action="deployment.rolled_back", target_id=str(newest.pk))
    assert event.actor == staff
    assert event.after == {
        "revision": first.revision,
        "outcome": "applied",
        "error": "",
        "rolled_back_to": first.pk,
    }
    assert rollouts.latest_applied() == newest
    # Now revision 2 is the one to roll back to, and the rollback's row says what it repeated.
    assert rollback_url(second) in text
    assert f"Same config as revision #{first.pk}" in text


def test_rollback_to_a_failed_or_current_revision_is_refused(
    staff_client, unreachable, two_revisions
) -> None:
    _, second = two_revisions
    failed = record(second.config, outcome="failed", error="dashboard unreachable")
    failed.config_hash = "f" * 64
    failed.save()
    count = DeploymentRevision.objects.count()
    response = staff_client.post(rollback_url(failed), {"confirm": "yes"})
    assert response.status_code == 400
    assert "never accepted by Ray" in response.content.decode()
    response = staff_client.post(rollback_url(second), {"confirm": "yes"})
    assert response.status_code == 400
    assert "is what Ray runs now" in response.content.decode()
    assert DeploymentRevision.objects.count() == count
    assert staff_client.get("/staff/deploy/revisions/999999/rollback/").status_code == 404


def test_history_pages_take_a_fixed_number_of_queries(staff_client, unreachable) -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    model = CatalogModelFactory(name="syn-a")

    def page_queries() -> int:
        with CaptureQueriesContext(connection) as queries:
            assert staff_client.get(PAGE).status_code == 200
        return len(queries)

    for price in range(3):
        model.price_input_per_mtok = Decimal(price)
        model.save()
        record(render_serve_config())
    few = page_queries()
    for price in range(3, 30):
        model.price_input_per_mtok = Decimal(price % 5)  # configs repeat: "same config as"
        model.save()
        record(render_serve_config())
    assert page_queries() == few
    text = staff_client.get(PAGE + "?page=2").content.decode()
    assert "Page 2 of 2" in text
    assert "Same config as revision" in text
