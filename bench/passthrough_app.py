"""The baseline of the gateway-overhead benchmark: a bare Ray Serve ingress that passes the
request body straight to the same ModelServer (synthetic engine: a labelled test engine, not a
model) — no authentication, no limits, no metering, no usage events. Not part of the product."""

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve import Application

from inference.serving.app import ModelServerDeployment

bare = FastAPI()


@serve.deployment(name="BareIngress")
@serve.ingress(bare)
class BareIngress:
    def __init__(self, model: Any) -> None:
        self.model = model

    @bare.post("/v1/chat/completions")
    async def chat(self, request: Request) -> JSONResponse:
        body = await request.json()
        return JSONResponse(await self.model.complete.remote("chat.completions", body))


def build_bare(args: dict[str, Any]) -> Application:
    model = ModelServerDeployment.options(  # type: ignore[attr-defined]
        name="bare-model",
        ray_actor_options={"num_cpus": 0.5},
        max_ongoing_requests=1024,
        max_queued_requests=1024,
    ).bind(args["model"])
    return BareIngress.options(  # type: ignore[attr-defined]
        ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=1024
    ).bind(model)
