"""The wheel as a user gets it: installed in a fresh virtualenv, under an app of their own.

The user's project is tests/installed_app (distribution ``shop``): a package named
``app`` and a ``workers`` module, as this repository's demo has, using only
``import turbocast``. Everything here runs in a virtualenv that has the wheel
(with its ``celery`` extra), gunicorn and shop, from a directory outside the
repository with no PYTHONPATH: nothing of this checkout is on its path.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Browser

from tests.support import (
    ROOT,
    CeleryProcess,
    Distributions,
    Runtime,
    WebServer,
    build,
)

SHOP = ROOT / "tests" / "installed_app"
#: Variables that would put something other than the virtualenv on its Python's path.
UNSET = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE", "VIRTUAL_ENV")
#: Where a module is found (its file), or nothing when it is not found.
ORIGIN = "import importlib.util, sys; s = importlib.util.find_spec(sys.argv[1]); print(s and s.origin or '')"  # noqa: E501


@dataclass(frozen=True)
class Venv:
    """A fresh virtualenv; its commands run in ``workdir``, an empty directory outside the repo."""

    path: Path
    workdir: Path

    @classmethod
    def create(cls, root: Path) -> Venv:
        venv = cls(root / "venv", root / "work")
        venv.workdir.mkdir()
        subprocess.run([sys.executable, "-m", "venv", str(venv.path)], check=True, timeout=120)
        return venv

    @property
    def python(self) -> str:
        return str(self.path / "bin" / "python")

    def env(self) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if key not in UNSET}
        path = [p for p in env.get("PATH", "").split(os.pathsep) if not p.startswith(str(ROOT))]
        env["PATH"] = os.pathsep.join([str(self.path / "bin"), *path])
        return env

    def runtime(self) -> Runtime:
        return Runtime(python=self.python, cwd=self.workdir, env=self.env())

    def run(self, *args: str, timeout: float = 120) -> str:
        """Run this Python with ``args``; fail with its output unless it succeeds."""
        result = subprocess.run(
            [self.python, *args],
            cwd=self.workdir,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert result.returncode == 0, f"{args}:\n{result.stdout}{result.stderr}"
        return result.stdout.strip()

    def pip(self, *args: str) -> None:
        self.run("-m", "pip", *args, "--quiet", "--disable-pip-version-check", timeout=300)

    def origin(self, module: str) -> Path | None:
        """The file ``import module`` would load here; ``None`` when it would not be found."""
        origin = self.run("-c", ORIGIN, module)
        return Path(origin) if origin else None

    @property
    def site_packages(self) -> Path:
        return Path(self.run("-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"))


@pytest.fixture(scope="module")
def shop_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The user's project built into a wheel (from a copy, so nothing is written here)."""
    tmp = tmp_path_factory.mktemp("shop")
    source = shutil.copytree(SHOP, tmp / "source", ignore=shutil.ignore_patterns("__pycache__"))
    result = build(source, "--wheel")
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = (tmp / "dist").glob("shop-*.whl")
    return wheel


@pytest.fixture(scope="module")
def venv(distributions: Distributions, tmp_path_factory: pytest.TempPathFactory) -> Venv:
    """A fresh virtualenv (no system site-packages) with the wheel, its celery extra, gunicorn."""
    venv = Venv.create(tmp_path_factory.mktemp("installed"))
    venv.pip("install", f"{distributions.wheel}[celery]", "gunicorn")
    return venv


def test_the_wheel_installs_turbocast_alone_and_outlives_the_users_app(venv, shop_wheel):
    site = venv.site_packages
    path = venv.run("-c", "import sys; print('\\n'.join(sys.path))").splitlines()
    assert not [entry for entry in path if entry.startswith(str(ROOT))], path
    assert venv.origin("turbocast") == site / "turbocast" / "__init__.py"
    # The wheel brings no app and no workers of its own; this checkout's are out of reach.
    assert venv.origin("app") is None
    assert venv.origin("workers") is None

    venv.pip("install", str(shop_wheel))
    assert venv.origin("app") == site / "app" / "__init__.py"
    assert venv.origin("workers") == site / "workers.py"
    assert venv.origin("turbocast") == site / "turbocast" / "__init__.py"

    # Uninstalling the user's app takes its app away, and nothing of turbocast.
    venv.pip("uninstall", "-y", "shop")
    assert venv.origin("app") is None
    venv.run("-c", "import turbocast, turbocast.extension, turbocast.tasks, turbocast.relay")
    assert venv.origin("turbocast") == site / "turbocast" / "__init__.py"


@pytest.fixture(scope="module")
def shop(venv: Venv, shop_wheel: Path) -> Iterator[Venv]:
    """The virtualenv with the user's app installed; uninstalled again at the end."""
    venv.pip("install", str(shop_wheel))
    assert venv.origin("app") == venv.site_packages / "app" / "__init__.py"
    yield venv
    venv.pip("uninstall", "-y", "shop")
    venv.run("-c", "import turbocast")


@pytest.mark.browser
def test_the_users_app_gets_pushes_from_its_worker_and_its_beat(
    shop: Venv, redis_url: str, log_dir: Path, browser: Browser
):
    runtime = shop.runtime()
    env = {"FLASK_SECRET_KEY": "shop-secret", "FLASK_REDIS_URL": redis_url}
    celery_env = {**env, "FLASK_TICK_SECONDS": "1"}
    # gunicorn's threads mode, with turbocast's hooks; the user's Celery app is `workers`.
    web = WebServer(redis_url, env=env, threads=16, runtime=runtime)
    worker = CeleryProcess(redis_url, "worker", celery_env, app="workers", runtime=runtime)
    beat = CeleryProcess(redis_url, "beat", celery_env, app="workers", runtime=runtime)
    context = browser.new_context()
    context.set_default_timeout(15_000)
    try:
        for process in (web, worker, beat):
            process.start(log_dir)
        page = context.new_page()
        page.goto(web.base_url + "/")
        # Beat's tick reaches every page: the socket is up and Turbo applies what it gets.
        page.wait_for_selector("#tick .tick:has-text('Pushed by beat')")
        # The button's view enqueues the shop's task; the worker pushes to this session.
        page.click("#notify")
        page.wait_for_selector("#status:has-text('Queued')")
        page.wait_for_selector("#notices .notice:has-text('Pushed by a Celery task')")
        # to_session_later: turbocast's own task renders the shop's template in the worker.
        page.click("#notify-later")
        page.wait_for_selector("#notices .notice:has-text('Pushed by turbocast')")
        assert page.locator("#notices .notice").count() == 2
    except BaseException:
        for process in (web, worker, beat):
            print(f"--- {process.log_path}\n{process.log()[-5000:]}")
        raise
    finally:
        context.close()
        for process in (beat, worker, web):
            process.stop()
