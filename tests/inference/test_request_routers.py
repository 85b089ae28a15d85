"""The request router per model (``request_router``): what the router reads of our calls, what
the builder makes of it, what the renderer passes on, and the catalog's rule. Where requests
land on a real Ray Serve: ``test_request_router_ray.py``."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from django.core.exceptions import ValidationError

from inference import services
from inference.deployment import render_applications, render_spec
from inference.models import EngineKind, RequestRouter
from inference.serving import routers
from inference.serving.app import build_model
from inference.serving.spec import ModelArgs
from tests.factories import CatalogModelFactory

CHAT = {
    "model": "m",
    "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "image_url"}]},
    ],
}


def test_prompt_text_of_chat_messages_in_order_with_their_roles() -> None:
    assert routers.prompt_text(CHAT) == "<|system|>You are terse.<|user|>Hi"


def test_prompt_text_of_completion_prompts() -> None:
    assert routers.prompt_text({"prompt": "Once upon"}) == "Once upon"
    assert routers.prompt_text({"prompt": ["a", "b"]}) == "ab"
    assert routers.prompt_text({"prompt": [1, 2, 3]}) == "1,2,3,"
    assert routers.prompt_text({"prompt": [[1, 2], [3]]}) == "1,2,3,"


def test_nothing_to_match_without_messages_or_prompt() -> None:
    assert routers.prompt_text({"input": "embed me"}) == ""
    assert routers.prompt_text(None) == ""


def test_request_body_of_a_model_server_call() -> None:
    assert routers.request_body(("chat.completions", CHAT, 0), {}) is CHAT
    assert routers.request_body((), {"endpoint": "chat.completions", "body": CHAT}) is CHAT
    assert routers.request_body((), {}) is None  # e.g. ``stats()``


def test_the_router_reads_the_prompt_of_our_calls() -> None:
    """Ray's own router reads Ray LLM's request objects and raises on ours; ours reads the
    body of ``complete``/``stream`` (no Ray cluster needed: the method uses no state)."""
    router = object.__new__(routers.PrefixAffinityRouter)
    pending: Any = SimpleNamespace(args=["chat.completions", CHAT, 0], kwargs={})
    assert router._extract_text_from_request(pending) == "<|system|>You are terse.<|user|>Hi"
    with pytest.raises(ValueError, match="No request with message or prompt"):
        routers.PrefixCacheAffinityRouter._extract_text_from_request(router, pending)


def _args(router: str) -> dict[str, Any]:
    return ModelArgs(
        spec_version=1,
        name="m",
        deployment="model-m",
        engine="synthetic",
        redis_url="redis://127.0.0.1:6379/0",
        request_router=router,  # type: ignore[arg-type]
    ).model_dump(mode="json")


def test_default_builds_the_model_server_as_the_ingress_with_serves_router() -> None:
    app = build_model(_args("default"))
    server = app._bound_deployment
    assert server.name == "model-m"
    assert server._deployment_config.request_router_config.is_default_request_router()


def test_prefix_affinity_puts_the_model_server_behind_a_stub_ingress_with_the_router() -> None:
    """Serve refuses a custom router on an ingress under HAProxy: the server is the second
    deployment, the gateway's handle reaches it by name."""
    app = build_model(_args("prefix_affinity"))
    ingress = app._bound_deployment
    assert ingress.name == routers.INGRESS_DEPLOYMENT
    assert ingress.ray_actor_options["num_cpus"] == 0
    server = ingress.init_args[0]._bound_deployment
    assert server.name == "model-m"
    config = server._deployment_config.request_router_config
    assert config.request_router_class == "inference.serving.routers.PrefixAffinityRouter"
    assert config.get_request_router_class() is routers.PrefixAffinityRouter


@pytest.mark.django_db
def test_the_renderer_passes_the_router_in_the_models_args() -> None:
    CatalogModelFactory(name="plain")
    CatalogModelFactory(
        name="cached",
        engine_kind=EngineKind.VLLM,
        source_path="/models/x",
        engine_args={},
        request_router=RequestRouter.PREFIX_AFFINITY,
    )
    apps = {app["name"]: app for app in render_applications(render_spec())}
    model_apps = {app["args"]["name"]: app for app in apps.values() if "name" in app["args"]}
    assert model_apps["plain"]["args"]["request_router"] == "default"
    assert model_apps["cached"]["args"]["request_router"] == "prefix_affinity"
    # Not a deployment option: the builder sets it (the application's shape depends on it).
    for app in model_apps.values():
        assert "request_router_config" not in app["deployments"][0]


@pytest.mark.django_db
def test_prefix_affinity_is_for_vllm_models_only() -> None:
    model = services.catalog_model_create(
        name="vllm-cached",
        engine_kind=EngineKind.VLLM,
        source_path="/models/x",
        context_length=2048,
        request_router=RequestRouter.PREFIX_AFFINITY,
    )
    assert model.request_router == RequestRouter.PREFIX_AFFINITY
    for kind, extra in (
        (EngineKind.SYNTHETIC, {}),
        (EngineKind.OPENAI, {"upstream_base_url": "https://x.test/v1", "upstream_model": "m"}),
    ):
        with pytest.raises(ValidationError) as refused:
            services.catalog_model_create(
                name=f"{kind}-cached",
                engine_kind=kind,
                context_length=2048,
                request_router=RequestRouter.PREFIX_AFFINITY,
                **extra,
            )
        assert "request_router" in refused.value.message_dict
        assert "vLLM" in refused.value.message_dict["request_router"][0]
    with pytest.raises(ValidationError) as unknown:
        services.catalog_model_update(model=model, request_router="round_robin")
    assert "request_router" in unknown.value.message_dict


@pytest.mark.django_db
def test_the_management_api_sets_and_refuses_the_router(as_staff) -> None:  # type: ignore[no-untyped-def]
    from tests.inference.test_api import MODELS, model_body

    created = as_staff.post(MODELS, model_body(request_router="prefix_affinity"), format="json")
    assert created.status_code == 201, created.json()
    assert created.json()["request_router"] == "prefix_affinity"
    synthetic = CatalogModelFactory(name="syn")
    refused = as_staff.patch(
        MODELS + f"{synthetic.name}/", {"request_router": "prefix_affinity"}, format="json"
    )
    assert refused.status_code == 400
    assert "vLLM" in str(refused.json()["request_router"])


@pytest.mark.django_db
def test_the_staff_console_form_sets_the_router(staff) -> None:  # type: ignore[no-untyped-def]
    from django.test import Client

    from inference.models import CatalogModel
    from tests.console.test_staff_catalog import NEW, valid_create_data

    client = Client()
    client.force_login(staff)
    response = client.post(NEW, valid_create_data(request_router="prefix_affinity"))
    assert response.status_code == 302
    assert CatalogModel.objects.get(name="acme/chat-small").request_router == "prefix_affinity"
    # A form posted without the field (an older page) keeps Serve's default.
    response = client.post(NEW, valid_create_data(name="acme/other"))
    assert response.status_code == 302
    assert CatalogModel.objects.get(name="acme/other").request_router == "default"
