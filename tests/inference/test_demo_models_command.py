"""``manage.py demo_models``: the demo models prepared from PyPI packages and registered."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from inference.models import CatalogModel

MODELS_DIR = Path(
    os.environ.get("VLINDERS_MODELS_DIR", Path(__file__).resolve().parents[2] / "var" / "models")
)


@pytest.fixture
def models_dir(settings):  # type: ignore[no-untyped-def]
    settings.VLINDERS_MODELS_DIR = MODELS_DIR  # shared with the serving tests: converted once
    return MODELS_DIR


def test_registers_both_demo_models_once(db, models_dir):
    call_command("demo_models")
    chat = CatalogModel.objects.get(name="smollm2-135m-instruct")
    embed = CatalogModel.objects.get(name="all-minilm-l6-v2")
    assert chat.engine_kind == embed.engine_kind == "vllm"
    assert (Path(chat.source_path) / "model.safetensors").is_file()
    assert (Path(chat.source_path) / "tokenizer_config.json").is_file()
    assert (Path(embed.source_path) / "config.json").is_file()
    assert embed.engine_args["task"] == "embed"
    assert chat.price_input_per_mtok > 0

    chat.description = "edited by the operator"
    chat.save()
    call_command("demo_models")
    assert CatalogModel.objects.filter(name__in=[chat.name, embed.name]).count() == 2
    chat.refresh_from_db()
    assert chat.description == "edited by the operator"  # a second run changes nothing
    call_command("demo_models", "--update")
    chat.refresh_from_db()
    assert chat.description.startswith("SmolLM2-135M-Instruct (demo)")


def test_a_model_that_cannot_be_prepared_is_a_clear_error(db, settings, tmp_path):
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")
    settings.VLINDERS_MODELS_DIR = blocked
    with pytest.raises(CommandError, match="Could not prepare the demo models"):
        call_command("demo_models")
    assert not CatalogModel.objects.exists()
