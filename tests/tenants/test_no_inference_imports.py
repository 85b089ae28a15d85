"""The tenants app never imports the inference app: inference depends on tenants, so an import
the other way makes the two a cycle (``tenants/catalog.py`` says how tenants asks instead)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tenants import catalog

TENANTS = Path(__file__).resolve().parents[2] / "tenants"


def _imported_modules(source: str) -> list[str]:
    """Every module a source file imports, at any depth (functions, TYPE_CHECKING blocks)."""
    names: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
            # ``from inference import services`` names the package only in ``module``.
    return names


def _imports_inference(module: str) -> bool:
    return module == "inference" or module.startswith("inference.")


def test_the_detector_sees_every_form_of_import() -> None:
    source = (
        "import inference\n"
        "import inference.selectors as s\n"
        "from inference import services\n"
        "def f():\n    from inference.selectors import x\n"
        "if TYPE_CHECKING:\n    from inference.models import CatalogModel\n"
        "import inferencer\nfrom tenants import keys\n"
    )
    found = [name for name in _imported_modules(source) if _imports_inference(name)]
    assert found == [
        "inference",
        "inference.selectors",
        "inference",
        "inference.selectors",
        "inference.models",
    ]


def test_no_tenants_module_imports_inference() -> None:
    files = sorted(TENANTS.rglob("*.py"))
    assert len(files) > 10  # the walk found the app
    offenders = [
        f"{path.relative_to(TENANTS.parent)}: {name}"
        for path in files
        for name in _imported_modules(path.read_text())
        if _imports_inference(name)
    ]
    assert offenders == []


def test_asking_before_a_catalog_is_registered_fails_loudly(monkeypatch) -> None:
    monkeypatch.setattr(catalog, "_provider", None)
    with pytest.raises(catalog.ImproperlyConfigured, match="'inference' app"):
        catalog.model_names_for_organization(None)  # type: ignore[arg-type]


def test_the_inference_app_registers_the_catalog() -> None:
    from inference.selectors import TenantsCatalogProvider

    assert isinstance(catalog._provider, TenantsCatalogProvider)
