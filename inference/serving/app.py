"""The Ray Serve application builders (contract 1, ``docs/deployment-spec.md``).

The data plane is several Serve applications, so that a catalog change restarts only what it
changes (``spec.py`` says why): ``build_gateway`` builds the ``Gateway`` ingress application,
``build_model`` one application per model around a ``ModelServer``. The gateway reaches the
models through handles by name. A piece a builder cannot read fails the apply.

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
from inference.serving.spec import GatewayArgs, ModelArgs


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


def build_gateway(args: dict[str, Any]) -> Application:
    """The gateway application (``import_path: inference.serving.app:build_gateway``).

    ``args`` are ``GatewayArgs``: nothing of the catalog, so catalog changes never restart the
    gateway. Routes and prices arrive as the deployment's ``user_config`` (``reconfigure``);
    autoscaling as deployment options in the Serve config. Both are applied in place."""
    gateway = GatewayArgs.model_validate(args)
    return GatewayDeployment.options(  # type: ignore[attr-defined]
        ray_actor_options={"num_cpus": gateway.num_cpus},
        max_ongoing_requests=gateway.max_ongoing_requests,
        graceful_shutdown_timeout_s=30,
    ).bind(gateway.model_dump(mode="json"))


def build_model(args: dict[str, Any]) -> Application:
    """One model's application (``import_path: inference.serving.app:build_model``).

    ``args`` are ``ModelArgs``: the engine and its resources, so only their change restarts
    this model. Scaling, ``max_ongoing_requests`` and ``max_queued_requests`` arrive as
    deployment options in the Serve config (applied in place)."""
    model = ModelArgs.model_validate(args)
    actor: dict[str, Any] = {"num_cpus": model.resources.num_cpus}
    if model.resources.num_gpus:
        actor["num_gpus"] = model.resources.num_gpus
    if model.resources.accelerator_type:
        actor["accelerator_type"] = model.resources.accelerator_type
    router: dict[str, Any] = {}
    if model.request_router != "default":
        # Its own request router, so not the ingress (``routers.py``); loads part of Ray LLM.
        from inference.serving import routers

        router = routers.router_options(model.request_router)
    server = ModelServerDeployment.options(  # type: ignore[attr-defined]
        name=model.deployment,
        ray_actor_options=actor,
        health_check_period_s=10,
        health_check_timeout_s=30,
        graceful_shutdown_timeout_s=60,
        **router,
    ).bind(model.model_dump(mode="json"))
    return routers.with_router_ingress(server) if router else server
