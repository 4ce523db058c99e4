"""One import name: the core is ``turbocast`` (its source is app/turbo), and nothing else."""

from __future__ import annotations

import ast
import email
import importlib
import json
import re
import stat
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import turbocast
from tests.support import ROOT, Distributions

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


def test_each_public_name_loads_from_the_module_type_checkers_read_it_from():
    # The package imports its names on first use; the TYPE_CHECKING block is what mypy reads.
    tree = ast.parse((CORE / "__init__.py").read_text())
    (block,) = [
        n for n in tree.body if isinstance(n, ast.If) and ast.unparse(n.test) == "TYPE_CHECKING"
    ]
    typed = {alias.name: f"turbocast.{node.module}" for node in block.body for alias in node.names}
    assert sorted(typed) == sorted(turbocast.__all__)
    for name, module in typed.items():
        assert getattr(turbocast, name) is getattr(importlib.import_module(module), name), name
    assert set(turbocast.__all__) <= set(dir(turbocast))
    with pytest.raises(AttributeError, match="has no attribute 'Trubo'"):
        turbocast.Trubo  # noqa: B018


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


#: What the core imports, and so all that installing turbocast brings (with their own).
CORE_DEPENDENCIES = {"flask", "redis", "markupsafe", "itsdangerous", "wsproto"}


@pytest.fixture(scope="module")
def wheel(distributions: Distributions) -> Iterator[zipfile.ZipFile]:
    """The wheel, built from the sdist of a clean copy of this checkout."""
    with zipfile.ZipFile(distributions.wheel) as archive:
        yield archive


def test_the_wheel_holds_turbocast_and_nothing_else(wheel):
    names = wheel.namelist()
    strays = [n for n in names if not re.match(r"turbocast/|turbocast-[^/]+\.dist-info/", n)]
    assert strays == []
    modules = {name for name in names if name.endswith(".py")}
    assert modules == {f"turbocast/{path.name}" for path in CORE.glob("*.py")}
    assert "turbocast/py.typed" in names
    # Turbo's JavaScript and turbocast's reconnecting element: a page needs nothing else.
    static = {name for name in names if name.startswith("turbocast/static/")}
    assert static >= {"turbocast/static/turbo.js", "turbocast/static/turbocast.js"}
    assert static == {f"turbocast/static/{path.name}" for path in (CORE / "static").iterdir()}


def test_the_sdist_holds_the_core_and_builds_that_wheel(distributions):
    # The wheel above was built from this sdist, so it holds everything the wheel needs.
    with tarfile.open(distributions.sdist) as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    assert {"PKG-INFO", "pyproject.toml", "app/turbo/__init__.py", "app/turbo/py.typed"} <= names
    assert "app/turbo/static/turbo.js" in names


def test_the_wheel_ships_the_build_of_turbo_pinned_in_package_lock(wheel):
    lock = json.loads((ROOT / "package-lock.json").read_text())
    version = lock["packages"]["node_modules/@hotwired/turbo"]["version"]
    info = wheel.getinfo("turbocast/static/turbo.js")
    assert stat.S_ISREG(info.external_attr >> 16), "a link, not the file"
    shipped = wheel.read(info)
    assert shipped.startswith(f"/*!\nTurbo {version}\n".encode()), shipped[:40]
    assert b"StreamActions" in shipped and len(shipped) > 100_000


def test_the_wheel_requires_only_what_the_core_imports(wheel):
    (metadata,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    requires = email.message_from_bytes(wheel.read(metadata)).get_all("Requires-Dist")
    core = [line for line in requires if "extra ==" not in line]
    assert {re.split(r"[\[<>=;\s]", line)[0].lower() for line in core} == CORE_DEPENDENCIES
    assert any(line.startswith("celery") and 'extra == "celery"' in line for line in requires)
    assert any(line.startswith("gevent") and 'extra == "gevent"' in line for line in requires)


def test_the_wheel_registers_the_pytest_plugin(wheel):
    (entry_points,) = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
    text = wheel.read(entry_points).decode()
    assert "[pytest11]\nturbocast = turbocast.testing" in text
