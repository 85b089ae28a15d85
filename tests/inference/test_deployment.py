"""The renderer of contract 1: catalog -> deployment spec -> Serve config -> KubeRay manifest."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import stat
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
import yaml
from django.core.management import call_command
from ray.serve.schema import ServeDeploySchema

from inference.deployment import (
    APP_NAME,
    GATEWAY_DEPLOYMENT,
    GATEWAY_IMPORT_PATH,
    MODEL_IMPORT_PATH,
    config_revision,
    deployment_name,
    render_kuberay,
    render_serve_config,
    render_spec,
    to_yaml,
)
from inference.models import CatalogModel, EngineKind
from inference.ray_client import ensure_ray_auth_token, ray_auth_token
from inference.serving.spec import DeploymentSpec, GatewayArgs, GatewayConfig, ModelArgs
from tests.factories import CatalogModelFactory, ModelAliasFactory

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parents[2]
UPSTREAM_KEY = "sk-upstream-secret-key"


@pytest.fixture
def catalog() -> dict[str, CatalogModel]:
    """An active synthetic model with two aliases, a vLLM and an upstream model, and a disabled
    one (with an alias of its own)."""
    chat = CatalogModelFactory(
        name="zeta-chat",
        price_input_per_mtok=Decimal("0.5"),
        price_output_per_mtok=Decimal("1.25"),
        replica_cpus=Decimal("0.50"),
    )
    ModelAliasFactory(name="gpt-4", target=chat)
    ModelAliasFactory(name="chat", target=chat)
    llama = CatalogModelFactory(
        name="meta/llama-3.1-8b",
        engine_kind=EngineKind.VLLM,
        source_path="/models/llama",
        engine_args={"dtype": "bfloat16", "max_model_len": 8192, "tensor_parallel_size": 2},
        context_length=8192,
        min_replicas=0,
        scale_to_zero=True,
        max_replicas=4,
        target_ongoing_requests=8,
        replica_cpus=Decimal("4"),
        replica_gpus=Decimal("2"),
        accelerator_type="H100",
    )
    upstream = CatalogModelFactory(
        name="upstream-gpt",
        engine_kind=EngineKind.OPENAI,
        upstream_base_url="https://api.example.test/v1",
        upstream_model="gpt-4o",
        upstream_api_key=UPSTREAM_KEY,
        engine_args={"timeout_s": 30},
    )
    disabled = CatalogModelFactory(name="old-model", status=CatalogModel.Status.DISABLED)
    ModelAliasFactory(name="legacy", target=disabled)
    return {"chat": chat, "llama": llama, "upstream": upstream, "disabled": disabled}


def test_only_active_models_sorted_with_their_aliases(catalog) -> None:
    spec = render_spec()
    assert [m["name"] for m in spec["models"]] == ["meta/llama-3.1-8b", "upstream-gpt", "zeta-chat"]
    by_name = {m["name"]: m for m in spec["models"]}
    assert by_name["zeta-chat"]["aliases"] == ["chat", "gpt-4"]
    assert by_name["meta/llama-3.1-8b"]["aliases"] == []
    assert "legacy" not in json.dumps(spec)
    assert "old-model" not in json.dumps(spec)


def test_model_entries_follow_the_contract(catalog, settings) -> None:
    spec = render_spec()
    by_name = {m["name"]: m for m in spec["models"]}
    chat, llama, upstream = (
        by_name["zeta-chat"],
        by_name["meta/llama-3.1-8b"],
        by_name["upstream-gpt"],
    )
    # Prices are decimal strings (6 places), never floats.
    assert chat["price_input_per_mtok"] == "0.500000"
    assert chat["price_output_per_mtok"] == "1.250000"
    assert chat["engine"] == "synthetic"
    assert chat["source"] == {}
    assert chat["engine_args"] == {"ttft_ms": 0, "tpot_ms": 0}
    assert chat["resources"] == {"num_cpus": 0.5, "num_gpus": 0, "accelerator_type": None}
    assert llama["source"] == {"path": "/models/llama"}
    assert llama["engine_args"]["tensor_parallel_size"] == 2
    # A scale-to-zero model carries its idle delay (VLINDERS_SCALE_TO_ZERO_IDLE_S, default 300).
    assert llama["scaling"] == {
        "min_replicas": 0,
        "max_replicas": 4,
        "target_ongoing_requests": 8,
        "scale_to_zero_idle_s": 300.0,
    }
    assert llama["resources"] == {"num_cpus": 4, "num_gpus": 2, "accelerator_type": "H100"}
    assert llama["context_length"] == 8192
    # No key in the spec: it reaches the model server through Redis, encrypted.
    assert upstream["source"] == {"base_url": "https://api.example.test/v1", "model": "gpt-4o"}
    assert (chat["max_queued_requests"], chat["request_timeout_s"]) == (128, 300)
    assert spec["spec_version"] == 1
    assert spec["redis_url"] == settings.REDIS_URL
    assert spec["redis_prefix"] == settings.VLINDERS_REDIS_PREFIX
    assert spec["broker_url"] == settings.CELERY_BROKER_URL
    assert spec["usage_task"] == "billing.ingest_usage"
    assert spec["usage_spool_dir"] == str(settings.VLINDERS_USAGE_SPOOL_DIR)
    assert spec["gateway"]["max_body_bytes"] == settings.VLINDERS_MAX_BODY_BYTES
    assert spec["gateway"]["access_cache_ttl_s"] == 30.0


def test_the_data_plane_reads_the_spec(catalog) -> None:
    """Both sides of the contract: the builder's own model accepts what the renderer writes."""
    parsed = DeploymentSpec.model_validate(render_spec())
    assert set(parsed.routes()) == {
        "meta/llama-3.1-8b",
        "upstream-gpt",
        "zeta-chat",
        "chat",
        "gpt-4",
    }


def test_deployment_names_are_stable_unique_and_valid() -> None:
    name = deployment_name("meta/llama-3.1-8b")
    assert name == deployment_name("meta/llama-3.1-8b")
    assert re.fullmatch(r"model-meta-llama-3-1-8b-[0-9a-f]{6}", name)
    assert name.endswith(hashlib.sha256(b"meta/llama-3.1-8b").hexdigest()[:6])
    # Names that slug alike still get distinct deployments.
    assert deployment_name("a/b") != deployment_name("a-b")
    long = deployment_name("x" * 128)
    assert len(long) <= 60
    assert re.fullmatch(r"model-[a-z0-9-]+-[0-9a-f]{6}", long)


def test_revision_is_the_hash_of_the_canonical_spec(catalog) -> None:
    spec = render_spec()
    without = {k: v for k, v in spec.items() if k != "revision"}
    canonical = json.dumps(without, sort_keys=True, separators=(",", ":"))
    assert spec["revision"] == hashlib.sha256(canonical.encode()).hexdigest()
    # Deterministic: rendering again (new querysets, new objects) gives the same revision.
    assert render_spec() == spec


def test_revision_changes_with_what_is_deployed_only(catalog) -> None:
    first = render_spec()["revision"]
    chat = catalog["chat"]
    chat.description = "only words"
    chat.save()
    assert render_spec()["revision"] == first  # descriptions are not deployed

    chat.price_output_per_mtok = Decimal("2")
    chat.save()
    priced = render_spec()["revision"]
    assert priced != first

    ModelAliasFactory(name="another-alias", target=chat)
    aliased = render_spec()["revision"]
    assert aliased != priced

    catalog["disabled"].status = CatalogModel.Status.ACTIVE
    catalog["disabled"].save()
    assert render_spec()["revision"] != aliased


def test_serve_config_validates_against_rays_schema(catalog, settings) -> None:
    settings.VLINDERS_GATEWAY_HOST = "127.0.0.2"
    settings.VLINDERS_GATEWAY_PORT = 8123
    config = render_serve_config()
    parsed = ServeDeploySchema.model_validate(config)
    assert parsed.http_options.host == "127.0.0.2"
    assert parsed.http_options.port == 8123
    gateway, *models = parsed.applications
    assert (gateway.name, gateway.route_prefix, gateway.import_path) == (
        APP_NAME,
        "/",
        GATEWAY_IMPORT_PATH,
    )
    spec = DeploymentSpec.model_validate(render_spec())
    # One application per model, except an ``openai`` model: the gateway calls its upstream.
    assert [(app.name, app.route_prefix, app.import_path) for app in models] == [
        (model.deployment, None, MODEL_IMPORT_PATH)
        for model in spec.models
        if model.engine != "openai"
    ]
    assert config["proxy_location"] == "EveryNode"
    # Round trip through JSON (what the dashboard receives) changes nothing.
    assert json.loads(json.dumps(config)) == config


def test_the_config_splits_the_spec_by_what_a_change_restarts(catalog) -> None:
    """Ray Serve restarts every deployment of an application whose ``args`` change: the
    gateway's args hold nothing of the catalog, each model's args only its engine; routes and
    prices are the gateway's ``user_config``, scaling and queue bounds deployment options."""
    spec = DeploymentSpec.model_validate(render_spec())
    config = render_serve_config()
    gateway, *models = config["applications"]
    assert GatewayArgs.model_validate(gateway["args"]) == spec.gateway_args()
    assert "models" not in gateway["args"]
    (options,) = gateway["deployments"]
    assert options["name"] == GATEWAY_DEPLOYMENT
    routing = GatewayConfig.model_validate(options["user_config"])
    assert routing == spec.gateway_config()
    assert routing.revision == spec.revision == config_revision(config)
    assert set(routing.routes()) == set(spec.routes())
    served = [model for model in spec.models if model.engine != "openai"]
    for app, model in zip(models, served, strict=True):
        args = ModelArgs.model_validate(app["args"])
        assert (args.name, args.engine, args.engine_args) == (
            model.name,
            model.engine,
            model.engine_args,
        )
        assert "price_input_per_mtok" not in app["args"]
        assert "aliases" not in app["args"]
        (deployment,) = app["deployments"]
        assert deployment["name"] == model.deployment
        assert deployment["max_queued_requests"] == model.max_queued_requests
        assert deployment["autoscaling_config"]["max_replicas"] == model.scaling.max_replicas


def _app_args(config: dict, name: str) -> dict:  # type: ignore[type-arg]
    return next(app["args"] for app in config["applications"] if app["name"] == name)


def test_a_price_or_alias_change_leaves_every_applications_args_alone(catalog) -> None:
    before = render_serve_config()
    chat = catalog["chat"]
    chat.price_output_per_mtok = Decimal("9")
    chat.max_replicas = 3
    chat.save()
    ModelAliasFactory(name="new-alias", target=chat)
    after = render_serve_config()
    assert config_revision(after) != config_revision(before)
    for app in before["applications"]:
        assert _app_args(after, app["name"]) == app["args"]


def test_an_engine_change_changes_only_that_models_args(catalog) -> None:
    before = render_serve_config()
    llama = catalog["llama"]
    llama.engine_args = {**llama.engine_args, "max_model_len": 4096}
    llama.save()
    after = render_serve_config()
    changed = {
        app["name"]
        for app in after["applications"]
        if app["args"] != _app_args(before, app["name"])
    }
    assert changed == {deployment_name(llama.name)}


def test_an_openai_model_is_called_by_the_gateway_itself(catalog) -> None:
    """No application for an ``openai`` model (a Ray hop for nothing): its route carries the
    upstream the gateway calls in its own process, without the key."""
    config = render_serve_config()
    upstream = deployment_name(catalog["upstream"].name)
    assert upstream not in {app["name"] for app in config["applications"]}
    routing = GatewayConfig.model_validate(
        config["applications"][0]["deployments"][0]["user_config"]
    )
    (route,) = [model for model in routing.models if model.name == "upstream-gpt"]
    assert route.deployment == upstream
    assert route.upstream is not None
    assert route.upstream.model_dump() == {
        "base_url": "https://api.example.test/v1",
        "model": "gpt-4o",
        "engine_args": {"timeout_s": 30},
    }
    assert all(model.upstream is None for model in routing.models if model.name != "upstream-gpt")


def test_no_upstream_key_in_the_config_or_the_manifest(catalog) -> None:
    assert UPSTREAM_KEY not in json.dumps(render_serve_config())
    assert UPSTREAM_KEY not in to_yaml(render_kuberay())
    assert UPSTREAM_KEY not in json.dumps(render_spec())


def test_an_empty_catalog_still_renders_a_valid_config(db) -> None:
    config = render_serve_config()
    ServeDeploySchema.model_validate(config)
    (gateway,) = config["applications"]
    assert gateway["deployments"][0]["user_config"]["models"] == []


def test_kuberay_manifest_runs_the_same_application(catalog, settings) -> None:
    manifest = render_kuberay(name="vl-prod", namespace="inference")
    assert manifest["apiVersion"] == "ray.io/v1"
    assert manifest["kind"] == "RayService"
    assert manifest["metadata"]["name"] == "vl-prod"
    assert manifest["metadata"]["namespace"] == "inference"
    serve_config = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(serve_config)
    assert serve_config["applications"] == render_serve_config()["applications"]
    assert serve_config["http_options"] == {"host": "0.0.0.0", "port": 8000}
    revision = render_spec()["revision"]
    assert manifest["metadata"]["annotations"]["vlinders.io/revision"] == revision

    cluster = manifest["spec"]["rayClusterConfig"]
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    (workers,) = cluster["workerGroupSpecs"]
    worker = workers["template"]["spec"]["containers"][0]
    assert {p["name"]: p["containerPort"] for p in head["ports"]}["serve"] == 8000
    for container in (head, worker):
        env = {e["name"]: e for e in container["env"]}
        assert env["RAY_SERVE_ENABLE_HA_PROXY"]["value"] == "1"
        assert env["RAY_SERVE_THROUGHPUT_OPTIMIZED"]["value"] == "1"
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["key"] == "auth_token"
        assert env["VLINDERS_KEY_PEPPER"]["valueFrom"]["secretKeyRef"]["key"] == "key_pepper"
        assert env["VLINDERS_SECRETS_KEY"]["valueFrom"]["secretKeyRef"]["key"] == "secrets_key"
        assert env["PROMETHEUS_MULTIPROC_DIR"]["value"] == container["volumeMounts"][0]["mountPath"]
    # The pepper is referenced, never written into the manifest.
    text = to_yaml(manifest)
    assert settings.VLINDERS_KEY_PEPPER not in text
    # The YAML is the manifest (serveConfigV2 as a literal block).
    assert yaml.safe_load(text) == manifest
    assert "serveConfigV2: |" in text
    assert "&id" not in text  # no YAML anchors: plain manifests


def test_serve_render_command(catalog, tmp_path) -> None:
    out = io.StringIO()
    call_command("serve", "render", stdout=out)
    assert json.loads(out.getvalue()) == render_serve_config()

    target = tmp_path / "rayservice.yaml"
    call_command("serve", "render", "--kuberay", "--output", str(target), stderr=io.StringIO())
    manifest = yaml.safe_load(target.read_text())
    assert manifest["kind"] == "RayService"
    assert (
        config_revision(yaml.safe_load(manifest["spec"]["serveConfigV2"]))
        == (render_spec()["revision"])
    )


# --- the token: one function for run_ray, serve apply and the tasks ----------------------------


def test_token_from_settings_else_the_generated_file(settings, tmp_path) -> None:
    settings.VLINDERS_RAY_AUTH_TOKEN_FILE = tmp_path / "ray_auth_token"
    settings.VLINDERS_RAY_AUTH_TOKEN = "configured"
    assert ray_auth_token() == "configured"
    assert ensure_ray_auth_token() == "configured"
    assert not (tmp_path / "ray_auth_token").exists()

    settings.VLINDERS_RAY_AUTH_TOKEN = ""
    assert ray_auth_token() == ""
    generated = ensure_ray_auth_token()
    assert len(generated) == 64
    assert ray_auth_token() == generated == ensure_ray_auth_token()
    mode = (tmp_path / "ray_auth_token").stat().st_mode
    assert stat.S_IMODE(mode) == 0o600


PROBE = """
import json, django
from django.conf import settings
django.setup()
print(json.dumps({
    "token": settings.VLINDERS_RAY_AUTH_TOKEN, "url": settings.VLINDERS_RAY_DASHBOARD_URL,
    "host": settings.VLINDERS_GATEWAY_HOST, "port": settings.VLINDERS_GATEWAY_PORT,
    "spool": str(settings.VLINDERS_USAGE_SPOOL_DIR), "min": settings.VLINDERS_GATEWAY_MIN_REPLICAS,
    "max": settings.VLINDERS_GATEWAY_MAX_REPLICAS, "body": settings.VLINDERS_MAX_BODY_BYTES,
    "ttl": settings.VLINDERS_ACCESS_CACHE_TTL_S,
    "beat": settings.CELERY_BEAT_SCHEDULE["reconcile-deployments"],
}))
"""


def _settings(tmp_path: Path, **env: str) -> dict:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("VLINDERS_", "RAY_")) and k != "DATABASE_URL"
    }
    clean |= {
        "DJANGO_SETTINGS_MODULE": "vlinders.settings",
        "VLINDERS_VAR_DIR": str(tmp_path),
        "HOME": str(tmp_path / "home"),
    }
    clean |= env
    out = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, env=clean, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_data_plane_settings_defaults(tmp_path) -> None:
    got = _settings(tmp_path)
    assert got["token"] == ""
    assert got["url"] == "http://127.0.0.1:8265"
    assert (got["host"], got["port"]) == ("127.0.0.1", 8100)
    assert got["spool"] == str(tmp_path / "usage-spool")
    assert (got["min"], got["max"], got["body"], got["ttl"]) == (1, 1, 1048576, 30.0)
    assert got["beat"] == {"task": "inference.reconcile_deployments", "schedule": 15.0}


def test_token_is_found_where_ray_looks(tmp_path) -> None:
    home = tmp_path / "home" / ".ray"
    home.mkdir(parents=True)
    (home / "auth_token").write_text("from-home\n")
    assert _settings(tmp_path)["token"] == "from-home"
    path = tmp_path / "token-file"
    path.write_text("from-path\n")
    assert _settings(tmp_path, RAY_AUTH_TOKEN_PATH=str(path))["token"] == "from-path"
    assert _settings(tmp_path, RAY_AUTH_TOKEN="from-ray-env")["token"] == "from-ray-env"
    assert _settings(tmp_path, VLINDERS_RAY_AUTH_TOKEN="explicit")["token"] == "explicit"
