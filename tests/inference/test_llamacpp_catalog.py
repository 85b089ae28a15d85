"""The ``llamacpp`` engine kind in the control plane: the catalog's rules for it, what the
renderer sends its replicas (``ModelArgs`` that ``make_engine`` turns into the engine), and the
demo catalog entry of the SmolLM2 GGUF."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.core.management import call_command

from inference import services
from inference.deployment import render_spec
from inference.models import CatalogModel
from inference.serving.engines.llamacpp_engine import LlamaCppEngine
from inference.serving.model_server import make_engine
from inference.serving.spec import DeploymentSpec
from tests.inference.test_demo_models_command import MODELS_DIR

pytestmark = pytest.mark.django_db

LLAMACPP = {
    "engine_kind": "llamacpp",
    "source_path": "/models/SmolLM2-135M-Instruct.Q4_1.gguf",
    "engine_args": {"n_ctx": 2048, "n_threads": 2},
}


def create(name: str = "smollm2-gguf", **fields: Any) -> CatalogModel:
    return services.catalog_model_create(
        **{"name": name, "context_length": 2048, **LLAMACPP, **fields}
    )


def test_a_gguf_model_is_created_and_rendered_for_its_replicas() -> None:
    create(replica_cpus=2)
    spec = DeploymentSpec.model_validate(render_spec())
    (model,) = spec.models
    assert model.engine == "llamacpp"
    assert model.source == {"path": LLAMACPP["source_path"]}
    args = spec.model_args(model)
    engine = make_engine(args)
    assert isinstance(engine, LlamaCppEngine)
    assert (engine.path, engine.model) == (LLAMACPP["source_path"], "smollm2-gguf")
    assert (engine.n_ctx, engine.n_threads) == (2048, 2)


def test_threads_default_to_the_replica_cpus() -> None:
    create(engine_args={}, replica_cpus=3)
    spec = DeploymentSpec.model_validate(render_spec())
    engine = make_engine(spec.model_args(spec.models[0]))
    assert isinstance(engine, LlamaCppEngine)
    assert engine.n_threads == 3


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"source_path": ""}, "source_path"),
        ({"source_path": "/models/smollm2-135m-instruct"}, "source_path"),
        ({"engine_args": {"n_ctx": 4096}}, "engine_args"),  # over context_length
        ({"engine_args": {"max_model_len": 2048}}, "engine_args"),  # a vLLM argument
        ({"engine_args": {"n_threads": 0}}, "engine_args"),
        ({"upstream_base_url": "https://upstream.example.test/v1"}, "upstream_base_url"),
    ],
)
def test_the_catalog_refuses_a_bad_gguf_model(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        create(**fields)
    assert field in caught.value.message_dict
    assert not CatalogModel.objects.exists()


def test_the_demo_command_registers_the_gguf_on_llamacpp(settings) -> None:  # type: ignore[no-untyped-def]
    settings.VLINDERS_MODELS_DIR = MODELS_DIR  # shared with the other tests: prepared once
    call_command("demo_models")
    model = CatalogModel.objects.get(name="smollm2-135m-gguf")
    assert model.engine_kind == "llamacpp"
    assert model.source_path.endswith(".gguf")
    assert Path(model.source_path).is_file()
    assert model.engine_args["n_ctx"] <= model.context_length
    # The vLLM entry is the same model de-quantised from this very file.
    assert CatalogModel.objects.get(name="smollm2-135m-instruct").engine_kind == "vllm"
