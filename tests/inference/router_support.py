"""A model server that says which replica answered, for the request-router tests.

``TaggedModelServer`` is the real ``ModelServer`` (here on the synthetic engine, the labelled
test engine) whose whole answers carry one extra field, ``replica``: the id of the Serve replica
that produced them (Serve's replica context). The tests deploy it in place of
``inference.serving.app:build_model`` with the same args and deployment options, so what is
measured is where Serve's router sent each request.
"""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve import Application

from inference.serving import routers
from inference.serving.engines.base import Endpoint
from inference.serving.model_server import ModelServer
from inference.serving.spec import ModelArgs

IMPORT_PATH = "tests.inference.router_support:build_tagged_model"


class TaggedModelServer(ModelServer):
    async def complete(
        self, endpoint: Endpoint, body: dict[str, Any], priority: int = 0
    ) -> dict[str, Any]:
        result = await super().complete(endpoint, body, priority)
        return {**result, "replica": serve.get_replica_context().replica_id.unique_id}


TaggedDeployment = serve.deployment(TaggedModelServer)


def build_tagged_model(args: dict[str, Any]) -> Application:
    """``build_model``'s application (its router options, its stub ingress for a custom
    router) around the tagged server."""
    model = ModelArgs.model_validate(args)
    router = routers.router_options(model.request_router)
    server = TaggedDeployment.options(  # type: ignore[attr-defined]
        name=model.deployment, ray_actor_options={"num_cpus": model.resources.num_cpus}, **router
    ).bind(model.model_dump(mode="json"))
    return routers.with_router_ingress(server) if router else server
