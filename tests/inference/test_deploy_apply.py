"""Applying the catalog to a REAL local Ray (session fixture ``ray_cluster``: token auth, free
ports) and reconciling what Ray reports. Nothing here is faked: the dashboard is Ray's own, the
builders are the data plane's ``inference.serving.app:build_gateway`` and ``build_model``."""

from __future__ import annotations

import copy
import io
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from pydantic import ValidationError
from ray.serve.schema import ServeDeploySchema

from inference import tasks
from inference.deploy_services import deployment_apply, deployment_reconcile, deployment_wait
from inference.deployment import config_revision, deployment_name, render_serve_config
from inference.models import CatalogModel, DeploymentRevision, ModelDeploymentStatus
from inference.ray_client import RayAuthError, RayDashboardClient, RayUnreachable
from tenants.models import AuditEvent
from tests.factories import CatalogModelFactory, ModelAliasFactory, UserFactory
from tests.ray_fixtures import free_port

pytestmark = pytest.mark.django_db

DEPLOY_TIMEOUT = 180.0
ROOT = Path(__file__).resolve().parents[2]


def clear_applications(client: RayDashboardClient, settings: Any) -> None:
    """Remove every application (Serve keeps running) and wait until they are gone."""
    client.put_applications(
        {
            "http_options": {
                "host": settings.VLINDERS_GATEWAY_HOST,
                "port": settings.VLINDERS_GATEWAY_PORT,
            },
            "applications": [],
        }
    )
    deadline = time.monotonic() + 120
    while client.get_applications().get("applications"):
        assert time.monotonic() < deadline, "applications were not removed"
        time.sleep(1)


@pytest.fixture
def unreachable(settings):  # type: ignore[no-untyped-def]
    """A dashboard URL where nothing listens."""
    settings.VLINDERS_RAY_DASHBOARD_URL = f"http://127.0.0.1:{free_port()}"
    settings.VLINDERS_RAY_AUTH_TOKEN = "irrelevant"
    return settings


def synthetic_models() -> list[CatalogModel]:
    """Two synthetic-engine entries (the labelled test engine, not models) and an alias; plus a
    disabled entry that must not be deployed."""
    first = CatalogModelFactory(name="synthetic-a", replica_cpus=Decimal("0.5"))
    second = CatalogModelFactory(name="synthetic/b", replica_cpus=Decimal("0.5"))
    ModelAliasFactory(name="synthetic-alias", target=first)
    CatalogModelFactory(name="synthetic-off", status=CatalogModel.Status.DISABLED)
    return [first, second]


def states() -> dict[str, tuple[str, int, int]]:
    return {
        row.catalog_model.name: (row.state, row.replicas_running, row.replicas_target)
        for row in ModelDeploymentStatus.objects.select_related("catalog_model")
    }


# --- failures that never reach a running Ray -----------------------------------------------------


def test_unreachable_dashboard_is_recorded_failed(unreachable) -> None:
    CatalogModelFactory(name="synthetic-a")
    user = UserFactory(username="deployer", is_staff=True)
    record = deployment_apply(applied_by=user)
    assert record.outcome == DeploymentRevision.Outcome.FAILED
    assert "unreachable" in record.error
    assert record.applied_by == user
    assert record.finished_at is not None
    stored = DeploymentRevision.objects.get(pk=record.pk)
    assert stored.config == render_serve_config()
    assert stored.revision == config_revision(render_serve_config())
    # The outcome is in the audit log, as a platform-level record by the deployer.
    event = AuditEvent.objects.get(action="deployment.applied", target_id=str(record.pk))
    assert event.organization is None
    assert event.actor == user
    assert event.after["outcome"] == "failed"
    assert "unreachable" in event.after["error"]


def test_unreachable_dashboard_marks_nothing_running(unreachable) -> None:
    model = CatalogModelFactory(name="synthetic-a")
    ModelDeploymentStatus.objects.create(
        catalog_model=model, deployment=deployment_name(model.name), state="running"
    )
    rows = deployment_reconcile()
    assert [(row.state, row.replicas_running) for row in rows] == [("unknown", 0)]
    assert "unreachable" in rows[0].message


def test_tasks_record_instead_of_raising(unreachable) -> None:
    CatalogModelFactory(name="synthetic-a")
    user = UserFactory(username="deployer", is_staff=True)
    result = tasks.apply_deployment.apply(kwargs={"applied_by_id": user.pk}).get()
    assert result["outcome"] == "failed"
    assert DeploymentRevision.objects.get(pk=result["id"]).applied_by == user
    assert tasks.reconcile_deployments.apply().get() == {"unknown": 1}


def test_serve_apply_command_fails_loudly(unreachable) -> None:
    with pytest.raises(CommandError, match="Ray keeps the previous revision"):
        call_command("serve", "apply", stdout=io.StringIO())
    assert DeploymentRevision.objects.get().outcome == "failed"


# --- against the real cluster ------------------------------------------------------------------


@pytest.mark.ray
def test_wrong_token_is_recorded_failed(ray_settings) -> None:
    ray_settings.VLINDERS_RAY_AUTH_TOKEN = "not-the-token"
    CatalogModelFactory(name="synthetic-a")
    record = deployment_apply()
    assert record.outcome == DeploymentRevision.Outcome.FAILED
    assert "refused the token" in record.error
    assert "403" in record.error
    (row,) = deployment_reconcile()
    assert row.state == "unknown"
    assert "refused the token" in row.message

    ray_settings.VLINDERS_RAY_AUTH_TOKEN = ""
    record = deployment_apply()
    assert "401" in record.error


@pytest.mark.ray
def test_reconcile_without_an_application_reports_absent(ray_settings, serve) -> None:
    clear_applications(serve, ray_settings)
    CatalogModelFactory(name="synthetic-a")
    (row,) = deployment_reconcile()
    assert (row.state, row.replicas_running, row.revision) == ("absent", 0, "")


@pytest.mark.ray
def test_apply_then_reconcile_to_running(ray_settings, serve) -> None:
    _, second = synthetic_models()
    # An upstream model has no application of its own (the gateway calls the upstream): it is
    # as up as the gateway, with no replicas of its own. This one's engine arguments (the
    # factory's synthetic ones, which the catalog's services would refuse) make its engine fail
    # to start in the gateway: the gateway still starts, and serves the other models.
    CatalogModelFactory(
        name="upstream-a",
        engine_kind="openai",
        upstream_base_url="http://127.0.0.1:9/v1",
        upstream_model="remote",
    )
    record = deployment_apply()
    assert record.outcome == DeploymentRevision.Outcome.APPLIED, record.error
    assert record.error == ""

    status = deployment_wait(revision=record.revision, timeout=DEPLOY_TIMEOUT)
    apps = serve.get_applications()["applications"]
    assert status == "RUNNING", {name: app.get("message") for name, app in apps.items()}

    deployment_reconcile()
    assert states() == {
        "synthetic-a": ("running", 1, 1),
        "synthetic/b": ("running", 1, 1),
        "synthetic-off": ("absent", 0, 0),
        "upstream-a": ("running", 0, 0),
    }
    running = ModelDeploymentStatus.objects.get(catalog_model=second)
    assert running.deployment == deployment_name("synthetic/b")
    assert running.revision == record.revision

    out = io.StringIO()
    call_command("serve", "status", stdout=out)
    assert "synthetic/b" in out.getvalue()
    assert "running" in out.getvalue()


@pytest.mark.ray
def test_refused_config_leaves_the_previous_revision_running(ray_settings, serve) -> None:
    first, _ = synthetic_models()
    good = deployment_apply()
    assert good.outcome == DeploymentRevision.Outcome.APPLIED, good.error
    assert deployment_wait(revision=good.revision, timeout=DEPLOY_TIMEOUT) == "RUNNING"

    # The catalog changes; the new config carries an option Ray's schema refuses server-side.
    first.price_output_per_mtok = Decimal("9")
    first.save()
    bad = copy.deepcopy(render_serve_config())
    (model_app,) = [a for a in bad["applications"] if a["name"] == deployment_name(first.name)]
    model_app["deployments"][0]["max_ongoing_requests"] = 0
    with pytest.raises(ValidationError):
        ServeDeploySchema.model_validate(bad)
    refused = deployment_apply(config=bad)
    assert refused.outcome == DeploymentRevision.Outcome.FAILED
    assert refused.revision != good.revision
    assert "Ray refused the config" in refused.error
    assert "max_ongoing_requests" in refused.error

    # Ray still serves the previous revision, and says so.
    app = serve.get_applications()["applications"]["vlinders"]
    assert app["status"] == "RUNNING"
    assert config_revision({"applications": [app["deployed_app_config"]]}) == good.revision
    deployment_reconcile()
    assert states()["synthetic-a"] == ("running", 1, 1)
    assert set(
        ModelDeploymentStatus.objects.filter(state="running").values_list("revision", flat=True)
    ) == {good.revision}
    assert DeploymentRevision.objects.get(pk=good.pk).outcome == "applied"


@pytest.mark.ray
def test_a_spec_the_builder_refuses_is_recorded_failed_by_the_reconciler(
    ray_settings, serve
) -> None:
    """Ray accepts the config (its schema is fine) but the builder refuses an unknown
    ``spec_version``: the model's application is DEPLOY_FAILED and the revision becomes
    failed."""
    model = CatalogModelFactory(name="synthetic-a", replica_cpus=Decimal("0.5"))
    config = render_serve_config()
    (model_app,) = [a for a in config["applications"] if a["name"] == deployment_name(model.name)]
    model_app["args"]["spec_version"] = 999
    config["applications"][0]["deployments"][0]["user_config"]["revision"] = "f" * 64
    record = deployment_apply(config=config)
    assert record.outcome == DeploymentRevision.Outcome.APPLIED, record.error
    assert deployment_wait(revision=record.revision, timeout=DEPLOY_TIMEOUT) == "DEPLOY_FAILED"

    (row,) = deployment_reconcile()
    assert row.state == "failed"
    assert row.message
    record.refresh_from_db()
    assert record.outcome == DeploymentRevision.Outcome.FAILED
    assert "Ray could not deploy it" in record.error


@pytest.mark.ray
def test_serve_apply_wait_prints_each_model(ray_settings, serve) -> None:
    synthetic_models()
    out = io.StringIO()
    call_command("serve", "apply", "--wait", str(DEPLOY_TIMEOUT), stdout=out)
    text = out.getvalue()
    assert "applied" in text
    assert "Application: RUNNING" in text
    for name in ("synthetic-a", "synthetic/b", "synthetic-off"):
        assert name in text


# --- the bring-up command ------------------------------------------------------------------


@pytest.mark.ray
def test_run_ray_generates_the_token_and_stops_on_sigterm(tmp_path) -> None:
    """``manage.py run_ray`` with no token configured: generates one (0600) that the cluster
    accepts, and SIGTERM stops the cluster."""
    home = tmp_path / "home"
    home.mkdir()
    dashboard = f"http://127.0.0.1:{free_port()}"
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("VLINDERS_", "RAY_")) and k != "DATABASE_URL"
    }
    env |= {
        "HOME": str(home),
        "VLINDERS_VAR_DIR": str(tmp_path / "var"),
        "VLINDERS_RAY_DASHBOARD_URL": dashboard,
        "PYTHONUNBUFFERED": "1",
    }
    temp_dir = tempfile.mkdtemp(prefix="vlrr")
    process = subprocess.Popen(
        [
            sys.executable,
            "manage.py",
            "run_ray",
            "--no-apply",
            "--num-cpus=1",
            f"--gcs-port={free_port()}",
            f"--temp-dir={temp_dir}",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    try:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if "listens on" in line or "Ray did not start" in line:
                break
        assert "Ray is up" in "".join(lines), lines
        token_file = tmp_path / "var" / "ray_auth_token"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        token = token_file.read_text().strip()
        assert RayDashboardClient(base_url=dashboard, token=token).get_applications() is not None
        with pytest.raises(RayAuthError):
            RayDashboardClient(base_url=dashboard, token="other").get_applications()

        process.send_signal(signal.SIGTERM)
        rest, _ = process.communicate(timeout=60)
        assert process.returncode == 0, rest
        assert "SIGTERM: stopping Ray." in rest
        assert "Ray stopped." in rest
        with pytest.raises(RayUnreachable):
            RayDashboardClient(base_url=dashboard, token=token, timeout=5).get_applications()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        shutil.rmtree(temp_dir, ignore_errors=True)
