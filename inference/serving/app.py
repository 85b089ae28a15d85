"""The Ray Serve application builder: ``import_path: inference.serving.app:build_app``.

``build_app(args)`` takes the deployment spec (contract 1, ``docs/deployment-spec.md``) and returns
one application: the ``Gateway`` ingress and one ``ModelServer`` deployment per model, each with
its own replicas, autoscaling and resources. A spec it cannot read fails the apply.

No ``from __future__ import annotations`` here: FastAPI reads the route methods' annotations at
run time, through Ray Serve's ingress wrapper, and needs them as real classes.
"""

import hmac
import os
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.serve import Application
from starlette.exceptions import HTTPException as StarletteHTTPException

from inference.serving import errors, metrics
from inference.serving.gateway import Gateway, api
from inference.serving.model_server import ModelServer
from inference.serving.spec import DeploymentSpec, ModelSpec


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """Unknown paths and wrong methods answer in OpenAI's error shape too."""
    error = errors.ApiError(
        exc.status_code,
        str(exc.detail),
        "invalid_request_error",
        None,
        "not_found" if exc.status_code == 404 else None,
    )
    return JSONResponse(error.body(), status_code=exc.status_code)


@api.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    return JSONResponse(errors.invalid(str(exc)).body(), status_code=400)


@serve.deployment(name="Gateway")
@serve.ingress(api)
class GatewayDeployment(Gateway):
    """The ingress: OpenAI's endpoints, health and metrics."""

    @api.post("/v1/chat/completions")
    async def chat_completions(self, request: Request) -> Response:
        return await self.handle(request, "chat.completions")

    @api.post("/v1/completions")
    async def completions(self, request: Request) -> Response:
        return await self.handle(request, "completions")

    @api.post("/v1/embeddings")
    async def embeddings(self, request: Request) -> Response:
        return await self.handle(request, "embeddings")

    @api.get("/v1/models")
    async def models(self, request: Request) -> Response:
        return await self.list_models(request)

    @api.get("/v1/models/{model:path}")
    async def model(self, request: Request, model: str) -> Response:
        return await self.get_model(request, model)

    @api.get("/health")
    async def healthz(self) -> Response:
        return await self.health()

    @api.get("/metrics")
    async def prometheus(self, request: Request) -> Response:
        """Prometheus text, for the platform's scraper only: it names every tenant and its
        volumes, and the gateway's port is the tenants' port. The scraper sends
        ``Authorization: Bearer $VLINDERS_METRICS_TOKEN`` (from the Ray cluster's environment);
        without that variable the endpoint does not exist."""
        token = os.environ.get("VLINDERS_METRICS_TOKEN", "")
        presented = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not token or not hmac.compare_digest(presented.encode(), token.encode()):
            error = errors.ApiError(404, "Not Found", "invalid_request_error", None, "not_found")
            return JSONResponse(error.body(), status_code=404)
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)


ModelServerDeployment = serve.deployment(ModelServer)


def _model_options(model: ModelSpec) -> dict[str, Any]:
    actor: dict[str, Any] = {"num_cpus": model.resources.num_cpus}
    if model.resources.num_gpus:
        actor["num_gpus"] = model.resources.num_gpus
    if model.resources.accelerator_type:
        actor["accelerator_type"] = model.resources.accelerator_type
    scaling = model.scaling
    return {
        "name": model.deployment,
        "ray_actor_options": actor,
        "autoscaling_config": {
            "min_replicas": scaling.min_replicas,
            "initial_replicas": max(scaling.min_replicas, 1),
            "max_replicas": scaling.max_replicas,
            "target_ongoing_requests": scaling.target_ongoing_requests,
        },
        "max_ongoing_requests": max(scaling.target_ongoing_requests * 4, 8),
        "health_check_period_s": 10,
        "health_check_timeout_s": 30,
        "graceful_shutdown_timeout_s": 60,
    }


def build_app(args: dict[str, Any]) -> Application:
    """Build the Vlinders application from the deployment spec."""
    spec = DeploymentSpec.model_validate(args)
    spec.routes()  # refuses a public name routed twice
    handles = {
        model.deployment: ModelServerDeployment.options(**_model_options(model)).bind(  # type: ignore[attr-defined]
            model.model_dump(mode="json")
        )
        for model in spec.models
    }
    gateway = spec.gateway
    return GatewayDeployment.options(  # type: ignore[attr-defined]
        ray_actor_options={"num_cpus": gateway.num_cpus},
        autoscaling_config={
            "min_replicas": gateway.min_replicas,
            "max_replicas": gateway.max_replicas,
            "target_ongoing_requests": gateway.target_ongoing_requests,
        },
        max_ongoing_requests=gateway.max_ongoing_requests,
    ).bind(spec.model_dump(mode="json"), handles)
