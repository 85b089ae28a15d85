"""The renderer of contract 1: the catalog -> the whole desired state of the data plane.

``render_spec()`` builds the deployment spec (the whole desired state, see
docs/deployment-spec.md), ``render_serve_config()`` the ``ServeDeploySchema`` config that
``PUT /api/serve/applications/`` takes, and ``render_kuberay()`` a KubeRay ``RayService`` whose
``serveConfigV2`` holds the same applications. Rendering is pure: it reads the catalog and the
settings and writes nothing, so the same catalog always renders the same ``revision``.

The config holds one application for the gateway and one per model, each split so that a change
restarts only what it changes (``inference/serving/spec.py`` says how Serve decides): the
gateway's routes and prices (the catalog's, and each plan's overrides from the price book) travel
as its ``user_config`` and scaling as deployment options, both applied in place; a model's engine
and resources are its application's ``args``. No secret is in any of it: upstream keys reach the
model servers through Redis (``inference/upstream_secrets.py``).
"""

from __future__ import annotations

import hashlib
import json
import re
from decimal import Decimal
from typing import Any

import yaml
from django.conf import settings

from inference.models import CatalogModel, EngineKind, ModelAlias
from inference.serving.spec import DeploymentSpec, ScalingSpec

SPEC_VERSION = 1
APP_NAME = "vlinders"
GATEWAY_DEPLOYMENT = "Gateway"
GATEWAY_IMPORT_PATH = "inference.serving.app:build_gateway"
MODEL_IMPORT_PATH = "inference.serving.app:build_model"
USAGE_TASK = "billing.ingest_usage"

# The gateway (ingress) deployment: replicas come from settings, the rest is fixed here. Its
# replicas are light (auth from a cache, routing, token counting): half a CPU each, and async,
# so one replica holds up to 1,024 requests at once (1,000 concurrent are tested).
GATEWAY_TARGET_ONGOING_REQUESTS = 64
GATEWAY_MAX_ONGOING_REQUESTS = 1024
GATEWAY_NUM_CPUS = 0.5

# Inside a Kubernetes pod the gateway must listen on every interface, on the port KubeRay's
# ``<name>-serve-svc`` Service targets (the container port named ``serve``).
KUBERAY_SERVE_PORT = 8000
KUBERAY_IMAGE = "ghcr.io/vlinders/vlinders-ray:0.1.0"
KUBERAY_SECRET = "vlinders-secrets"
KUBERAY_METRICS_DIR = "/tmp/vlinders-metrics"  # noqa: S108 (an emptyDir volume in the pod)

_SLUG_UNSAFE = re.compile(r"[^a-z0-9]+")
_SLUG_MAX = 40


def canonical_json(value: Any) -> str:
    """Sorted keys, no spaces (the form the revision is a hash of)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def sha256_hex(value: Any) -> str:
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()


def deployment_name(model_name: str) -> str:
    """The Serve deployment name of a catalog model: ``model-`` + a slug of the name + 6 hex of
    the name's SHA-256 (unique even when two names slug alike, stable, valid for Ray)."""
    slug = _SLUG_UNSAFE.sub("-", model_name.lower()).strip("-")[:_SLUG_MAX].strip("-")
    digest = hashlib.sha256(model_name.encode()).hexdigest()[:6]
    return f"model-{slug}-{digest}" if slug else f"model-{digest}"


def spec_revision(spec: dict[str, Any]) -> str:
    """SHA-256 (hex) of the canonical JSON of ``spec`` without its ``revision``."""
    return sha256_hex({key: value for key, value in spec.items() if key != "revision"})


def _price(value: Decimal) -> str:
    return f"{Decimal(value):.6f}"


def _number(value: Decimal | int | float) -> int | float:
    """A resource amount as JSON number: ``4`` for a whole one, ``0.5`` otherwise."""
    decimal = Decimal(value)
    return int(decimal) if decimal == decimal.to_integral_value() else float(decimal)


def _source(model: CatalogModel) -> dict[str, str]:
    if model.engine_kind in (EngineKind.VLLM, EngineKind.LLAMACPP):
        return {"path": model.source_path}  # a Hugging Face folder (vLLM), a .gguf (llama.cpp)
    if model.engine_kind == EngineKind.OPENAI:
        # The key is not here: it reaches the model server through Redis, encrypted.
        return {"base_url": model.upstream_base_url, "model": model.upstream_model}
    return {}


def _plan_prices(model: CatalogModel) -> dict[str, dict[str, str]]:
    """The price book's overrides of this model, by plan, sorted (``PlanModelPrice``; read from
    ``plan_prices.all()`` so a prefetch serves it)."""
    rows = sorted(model.plan_prices.all(), key=lambda row: row.plan)
    return {
        row.plan: {
            "price_input_per_mtok": _price(row.price_input_per_mtok),
            "price_output_per_mtok": _price(row.price_output_per_mtok),
        }
        for row in rows
    }


def render_scaling(model: CatalogModel) -> dict[str, Any]:
    """A model's ``scaling``: the catalog's bounds, with the scheduled minimum
    (``scheduled_min_replicas``, written by ``inference.scaling_schedule``) in place of
    ``min_replicas`` while a scaling window holds it. Two guards keep the rendered pair valid
    whatever changed since the window was stored: a model that does not scale to zero never
    gets 0 (it keeps one replica), and ``max_replicas`` is raised to the minimum when a window
    asks for more. A scale-to-zero model carries its idle delay
    (``VLINDERS_SCALE_TO_ZERO_IDLE_S``, Serve's ``downscale_to_zero_delay_s``)."""
    low = model.min_replicas
    if model.scheduled_min_replicas is not None:
        low = model.scheduled_min_replicas
    if low == 0 and not model.scale_to_zero:
        low = 1
    scaling: dict[str, Any] = {
        "min_replicas": low,
        "max_replicas": max(model.max_replicas, low),
        "target_ongoing_requests": model.target_ongoing_requests,
    }
    if model.scale_to_zero:
        scaling["scale_to_zero_idle_s"] = float(settings.VLINDERS_SCALE_TO_ZERO_IDLE_S)
    return scaling


def render_model(model: CatalogModel, aliases: list[str]) -> dict[str, Any]:
    """One entry of ``models[]``."""
    return {
        "name": model.name,
        "deployment": deployment_name(model.name),
        "engine": model.engine_kind,
        "source": _source(model),
        "engine_args": dict(model.engine_args or {}),
        "context_length": model.context_length,
        "price_input_per_mtok": _price(model.price_input_per_mtok),
        "price_output_per_mtok": _price(model.price_output_per_mtok),
        "plan_prices": _plan_prices(model),
        "aliases": sorted(aliases),
        "scaling": render_scaling(model),
        "resources": {
            "num_cpus": _number(model.replica_cpus),
            "num_gpus": _number(model.replica_gpus),
            "accelerator_type": model.accelerator_type or None,
        },
        "max_queued_requests": model.max_queued_requests,
        "request_timeout_s": model.request_timeout_s,
        "request_router": model.request_router,
        "cache_ttl_s": model.cache_ttl_s,
        "price_cache_hit_per_mtok": _price(model.price_cache_hit_per_mtok),
    }


def render_weighted_aliases(active: set[str]) -> list[dict[str, Any]]:
    """``aliases[]``: every alias with splits (a weighted alias), sorted by name, its targets the
    primary first then the splits by model name, each with its weight. Only active models are
    targets (a disabled one gets no traffic until enabled again, like a weight of 0); an alias
    left with no active target of a weight above 0 is not routed at all."""
    rows = (
        ModelAlias.objects.filter(splits__isnull=False)
        .distinct()
        .select_related("target")
        .prefetch_related("splits__catalog_model")
        .order_by("name")
    )
    out: list[dict[str, Any]] = []
    for alias in rows:
        splits = sorted(alias.splits.all(), key=lambda split: split.catalog_model.name)
        targets = [(alias.target.name, alias.weight)]
        targets += [(split.catalog_model.name, split.weight) for split in splits]
        live = [(name, weight) for name, weight in targets if name in active]
        if sum(weight for _, weight in live) > 0:
            out.append(
                {
                    "name": alias.name,
                    "targets": [{"model": name, "weight": weight} for name, weight in live],
                }
            )
    return out


def render_spec() -> dict[str, Any]:
    """The deployment spec (``args``): active catalog models only, sorted by name, each with its
    plain aliases, then the weighted aliases (``render_weighted_aliases``); the revision last,
    computed over everything else."""
    models = CatalogModel.objects.filter(status=CatalogModel.Status.ACTIVE).prefetch_related(
        "aliases__splits", "plan_prices"
    )
    spec: dict[str, Any] = {
        "spec_version": SPEC_VERSION,
        "revision": "",
        "redis_url": settings.REDIS_URL,
        "redis_prefix": settings.VLINDERS_REDIS_PREFIX,
        "broker_url": settings.CELERY_BROKER_URL,
        "usage_task": USAGE_TASK,
        "usage_queue": settings.VLINDERS_USAGE_QUEUE,
        "usage_spool_dir": str(settings.VLINDERS_USAGE_SPOOL_DIR),
        "gateway": {
            "min_replicas": settings.VLINDERS_GATEWAY_MIN_REPLICAS,
            "max_replicas": settings.VLINDERS_GATEWAY_MAX_REPLICAS,
            "target_ongoing_requests": GATEWAY_TARGET_ONGOING_REQUESTS,
            "max_ongoing_requests": GATEWAY_MAX_ONGOING_REQUESTS,
            "num_cpus": GATEWAY_NUM_CPUS,
            "max_body_bytes": settings.VLINDERS_MAX_BODY_BYTES,
            "access_cache_ttl_s": float(settings.VLINDERS_ACCESS_CACHE_TTL_S),
            "lease_s": float(settings.VLINDERS_LEASE_S),
        },
        "models": [
            render_model(
                model, [alias.name for alias in model.aliases.all() if not alias.splits.all()]
            )
            for model in sorted(models, key=lambda m: m.name)
        ],
        "aliases": render_weighted_aliases({model.name for model in models}),
    }
    spec["revision"] = spec_revision(spec)
    return spec


def render_applications(spec: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The Serve applications of a deployment spec: the gateway's, then one per model.

    - ``vlinders``: ``args`` are the gateway's start-up settings only; its ``Gateway``
      deployment gets the routes as ``user_config`` and its autoscaling as options.
    - ``model-…`` (the model's deployment name, for the application and its one deployment):
      ``args`` are the engine's (restart on change); autoscaling, ``max_ongoing_requests`` and
      ``max_queued_requests`` are deployment options (in place). No HTTP route: only the
      gateway calls it, through a handle. Not for an ``openai`` model: the gateway calls its
      upstream in its own process (``RouteSpec.upstream``), so a request costs no Ray hop.
    """
    parsed = DeploymentSpec.model_validate(spec if spec is not None else render_spec())
    parsed.routes()  # refuses a public name routed twice before Ray sees anything
    gateway = parsed.gateway
    apps: list[dict[str, Any]] = [
        {
            "name": APP_NAME,
            "route_prefix": "/",
            "import_path": GATEWAY_IMPORT_PATH,
            "args": parsed.gateway_args().model_dump(mode="json"),
            "deployments": [
                {
                    "name": GATEWAY_DEPLOYMENT,
                    "user_config": parsed.gateway_config().model_dump(mode="json"),
                    "autoscaling_config": {
                        "min_replicas": gateway.min_replicas,
                        "initial_replicas": gateway.min_replicas,
                        "max_replicas": gateway.max_replicas,
                        "target_ongoing_requests": gateway.target_ongoing_requests,
                    },
                }
            ],
        }
    ]
    for model in parsed.models:
        if model.upstream() is not None:
            continue  # an ``openai`` model: the gateway calls its upstream itself, no app
        scaling = model.scaling
        apps.append(
            {
                "name": model.deployment,
                "route_prefix": None,
                "import_path": MODEL_IMPORT_PATH,
                "args": parsed.model_args(model).model_dump(mode="json"),
                "deployments": [
                    {
                        "name": model.deployment,
                        "autoscaling_config": autoscaling_config(scaling),
                        "max_ongoing_requests": model.max_ongoing_requests,
                        "max_queued_requests": model.max_queued_requests,
                    }
                ],
            }
        )
    return apps


def autoscaling_config(scaling: ScalingSpec) -> dict[str, Any]:
    """A model deployment's Serve ``autoscaling_config`` (a deployment option: applied in
    place). ``initial_replicas`` is at least 1, so a new model starts warm and a scale-to-zero
    one goes to 0 after its idle delay (``downscale_to_zero_delay_s``). Serve starts a replica
    for a request to a deployment at 0 at once (its cold-start path ignores
    ``upscale_delay_s``); the request waits in the caller's handle queue meanwhile."""
    config: dict[str, Any] = {
        "min_replicas": scaling.min_replicas,
        "initial_replicas": max(scaling.min_replicas, 1),
        "max_replicas": scaling.max_replicas,
        "target_ongoing_requests": scaling.target_ongoing_requests,
    }
    if scaling.scale_to_zero_idle_s is not None:
        config["downscale_to_zero_delay_s"] = scaling.scale_to_zero_idle_s
    return config


def render_serve_config(
    spec: dict[str, Any] | None = None, *, host: str | None = None, port: int | None = None
) -> dict[str, Any]:
    """The whole ``ServeDeploySchema`` dict for ``PUT /api/serve/applications/``."""
    return {
        "proxy_location": "EveryNode",
        "http_options": {
            "host": host or settings.VLINDERS_GATEWAY_HOST,
            "port": port or settings.VLINDERS_GATEWAY_PORT,
        },
        "applications": render_applications(spec),
    }


def gateway_config_of(config: dict[str, Any]) -> dict[str, Any]:
    """The gateway's routing config (``user_config``) in a Serve config ({} if none)."""
    for app in config.get("applications") or []:
        if app.get("name") == APP_NAME:
            for deployment in app.get("deployments") or []:
                if deployment.get("name") == GATEWAY_DEPLOYMENT:
                    return dict(deployment.get("user_config") or {})
    return {}


def config_revision(config: dict[str, Any]) -> str:
    """The spec revision a Serve config carries (empty if it carries none)."""
    return str(gateway_config_of(config).get("revision", ""))


def model_applications(config: dict[str, Any]) -> list[str]:
    """The names of the model applications in a Serve config."""
    return [
        str(app["name"])
        for app in config.get("applications") or []
        if app.get("import_path") == MODEL_IMPORT_PATH
    ]


# --- KubeRay --------------------------------------------------------------------------------


def _serve_env(secret_name: str) -> list[dict[str, Any]]:
    def from_secret(name: str, key: str) -> dict[str, Any]:
        return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret_name, "key": key}}}

    return [
        # Serve's high-throughput mode (HAProxy ingress, throughput-optimised replica traffic).
        {"name": "RAY_SERVE_ENABLE_HA_PROXY", "value": "1"},
        {"name": "RAY_SERVE_THROUGHPUT_OPTIMIZED", "value": "1"},
        # Replicas (and their model engines) at normal priority, not Ray's default nice 15.
        {"name": "RAY_worker_niceness", "value": "0"},
        # Ray's token authentication: the same token on every node and in the control plane.
        {"name": "RAY_AUTH_MODE", "value": "token"},
        from_secret("RAY_AUTH_TOKEN", "auth_token"),
        # The API-key pepper reaches the gateway through the environment, never the config;
        # so does the key that decrypts upstream API keys (published to Redis encrypted).
        from_secret("VLINDERS_KEY_PEPPER", "key_pepper"),
        from_secret("VLINDERS_SECRETS_KEY", "secrets_key"),
        {"name": "RAY_USAGE_STATS_ENABLED", "value": "0"},
        # Gateway replicas share Prometheus multiprocess files, so /metrics sums them all.
        {"name": "PROMETHEUS_MULTIPROC_DIR", "value": KUBERAY_METRICS_DIR},
    ]


def _container(
    name: str, image: str, env: list[dict[str, Any]], cpu: str, memory: str, ports: list[Any]
) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": name,
        "image": image,
        "env": env,
        "resources": {
            "requests": {"cpu": cpu, "memory": memory},
            "limits": {"cpu": cpu, "memory": memory},
        },
    }
    if ports:
        container["ports"] = ports
    container["volumeMounts"] = [{"name": "metrics", "mountPath": KUBERAY_METRICS_DIR}]
    return container


def _pod(container: dict[str, Any]) -> dict[str, Any]:
    return {"spec": {"containers": [container], "volumes": [{"name": "metrics", "emptyDir": {}}]}}


def render_kuberay(
    *,
    name: str = "vlinders",
    namespace: str | None = None,
    image: str = KUBERAY_IMAGE,
    secret_name: str = KUBERAY_SECRET,
    worker_replicas: int = 1,
    worker_max_replicas: int = 4,
) -> dict[str, Any]:
    """A ``ray.io/v1`` ``RayService`` manifest running the same application.

    ``spec.serveConfigV2`` is the YAML of :func:`render_serve_config` with one change: inside a
    pod the gateway listens on ``0.0.0.0:8000``, where KubeRay's serve Service points. The
    applications (import paths, args, user_config, options, revision) are identical, so a
    catalog change restarts in the cluster exactly what it restarts locally (KubeRay passes
    the config to Serve's declarative API). ``secret_name`` is a Secret with the keys
    ``auth_token`` (Ray's token), ``key_pepper`` (``VLINDERS_KEY_PEPPER``) and
    ``secrets_key`` (``VLINDERS_SECRETS_KEY``);
    ``image`` holds Ray (``ray[serve,haproxy]``, the same version) and Vlinders installed.
    """
    config = render_serve_config(host="0.0.0.0", port=KUBERAY_SERVE_PORT)  # noqa: S104
    revision = config_revision(config)
    env = _serve_env(secret_name)
    head_ports = [
        {"containerPort": 6379, "name": "gcs-server"},
        {"containerPort": 8265, "name": "dashboard"},
        {"containerPort": 10001, "name": "client"},
        {"containerPort": KUBERAY_SERVE_PORT, "name": "serve"},
    ]
    metadata: dict[str, Any] = {
        "name": name,
        "labels": {
            "app.kubernetes.io/name": "vlinders",
            "app.kubernetes.io/component": "data-plane",
        },
        "annotations": {"vlinders.io/revision": revision},
    }
    if namespace:
        metadata["namespace"] = namespace
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": metadata,
        "spec": {
            "serveConfigV2": to_yaml(config),
            "rayClusterConfig": {
                "rayVersion": _ray_version(),
                # Serve autoscaling asks Ray's autoscaler for worker pods.
                "enableInTreeAutoscaling": True,
                "headGroupSpec": {
                    # The head runs the GCS, the dashboard and Serve's controller; replicas go
                    # to workers.
                    "rayStartParams": {"dashboard-host": "0.0.0.0", "num-cpus": "0"},  # noqa: S104
                    "template": _pod(_container("ray-head", image, env, "2", "8Gi", head_ports)),
                },
                "workerGroupSpecs": [
                    {
                        "groupName": "cpu",
                        "replicas": worker_replicas,
                        "minReplicas": worker_replicas,
                        "maxReplicas": max(worker_max_replicas, worker_replicas),
                        "rayStartParams": {},
                        "template": _pod(_container("ray-worker", image, env, "4", "16Gi", [])),
                    }
                ],
            },
        },
    }


def _ray_version() -> str:
    """The Ray version the cluster must run: the one installed beside the control plane (the
    image must match it), or the version this was tested with."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ray")
    except PackageNotFoundError:
        return "2.60.0"


class _BlockDumper(yaml.SafeDumper):
    """Writes multi-line strings (``serveConfigV2``) as literal blocks, and repeated values
    (the containers' shared env) in full instead of YAML anchors."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str_representer(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _str_representer)


def to_yaml(value: Any) -> str:
    return yaml.dump(value, Dumper=_BlockDumper, sort_keys=False, default_flow_style=False)
