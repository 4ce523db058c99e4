"""One import name: the core is ``turbocast`` (its source is app/turbo), and nothing else."""

from __future__ import annotations

import ast
import importlib
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import turbocast
from tests.support import ROOT

CORE = ROOT / "app" / "turbo"


def _sources(*folders: Path) -> list[Path]:
    return sorted(path for folder in folders for path in folder.rglob("*.py"))


def _imports(path: Path) -> Iterator[tuple[str, list[str]]]:
    """Each absolute import of ``path``: the module, and the names taken from it."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module, [alias.name for alias in node.names]


def test_turbocast_is_the_core_of_this_checkout():
    # An editable install of another checkout would test that one instead.
    assert Path(turbocast.__file__).resolve() == CORE / "__init__.py", (
        "turbocast is not this checkout's app/turbo: pip install -e . here"
    )
    assert turbocast.__name__ == "turbocast"


@pytest.mark.parametrize("name", ["app.turbo", "app.turbo.streams", "app.turbo.relay"])
def test_app_turbo_is_not_a_second_name(name):
    with pytest.raises(ImportError, match=r"import turbocast, not app\.turbo"):
        importlib.import_module(name)
    assert not any(module.startswith("app.turbo") for module in sys.modules)


def test_the_demo_and_the_workers_use_only_public_names():
    demo = [path for path in _sources(ROOT / "app") if CORE not in path.parents]
    for path in demo + _sources(ROOT / "workers"):
        for module, names in _imports(path):
            if module.split(".")[0] != "turbocast":
                continue
            where = path.relative_to(ROOT)
            assert module == "turbocast", f"{where} imports {module}: use turbocast's exports"
            assert set(names) <= set(turbocast.__all__), f"{where}: {names} not all public"


def test_the_core_imports_neither_the_demo_nor_the_workers():
    for path in _sources(CORE):
        for module, _ in _imports(path):
            assert module.split(".")[0] not in {"app", "workers", "turbocast"}, (
                f"{path.relative_to(ROOT)} imports {module}: the core imports itself relatively"
            )
