"""The Procfile and docker-compose.yml say exactly how production runs."""

from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
from functools import cache
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from honcho.environ import parse_procfile
from packaging.requirements import Requirement

from tests.support import ROOT
from turbocast import DEFAULTS

COMPOSE = ROOT / "docker-compose.yml"
NGINX_TEMPLATE = ROOT / "docs" / "deploy" / "nginx.conf.template"
#: What the user provides for compose to start: the certificate and key, by their paths.
TLS_ENV = {"TURBO_TLS_CERT": "/srv/tls/fullchain.pem", "TURBO_TLS_KEY": "/srv/tls/privkey.pem"}


def _procfile() -> dict[str, str]:
    return dict(parse_procfile((ROOT / "Procfile").read_text()).processes)


def _compose() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE.read_text()))


def test_procfile_runs_web_worker_and_exactly_one_beat():
    processes = _procfile()
    assert set(processes) == {"web", "worker", "beat"}
    assert processes["web"].startswith("gunicorn ") and "--threads" in processes["web"]
    assert "'app:create_app()'" in processes["web"]
    assert processes["worker"].startswith("celery -A workers.celery worker")
    assert processes["beat"].startswith("celery -A workers.celery beat")


def test_compose_has_redis_web_worker_beat_with_health_checks():
    services = _compose()["services"]
    for name in ("redis", "web", "worker", "beat"):
        assert name in services, name
        assert "healthcheck" in services[name], f"{name} has no health check"
    for name in ("web", "worker", "beat"):
        service = services[name]
        # Wired to the compose file's own redis service, by its name.
        assert urlsplit(service["environment"]["REDIS_URL"]).hostname == "redis"
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"


def test_compose_runs_the_procfile_commands():
    services = _compose()["services"]
    processes = _procfile()
    assert services["worker"]["command"] == processes["worker"]
    web = services["web"]["command"]
    assert web.startswith("gunicorn -c python:turbocast.gunicorn_hooks --bind :8000")
    assert "--threads 100" in web
    assert services["beat"]["command"].startswith("celery -A workers.celery beat")


def test_compose_gives_web_an_empty_metrics_directory_each_start():
    web = _compose()["services"]["web"]
    directory = web["environment"]["PROMETHEUS_MULTIPROC_DIR"]
    assert directory in web["tmpfs"]  # a tmpfs: empty whenever the container starts
    install = " ".join(_compose()["services"]["install"]["command"])
    assert ",metrics]" in install  # turbocast[...,metrics]: prometheus-client


def test_compose_puts_nginx_with_tls_in_front_of_web():
    services = _compose()["services"]
    proxy, web = services["proxy"], services["web"]
    assert proxy["image"].startswith("nginx:")
    assert proxy["depends_on"]["web"]["condition"] == "service_healthy"
    assert "healthcheck" in proxy
    assert [p.rsplit(":", 1)[1] for p in proxy["ports"]] == ["443"]
    # The same template file the integration test runs, through the image's template mechanism.
    template_mounts = [
        v for v in proxy["volumes"] if isinstance(v, str) and "/etc/nginx/templates/" in v
    ]
    assert len(template_mounts) == 1
    source, target = template_mounts[0].split(":")[:2]
    assert (ROOT / source).resolve() == NGINX_TEMPLATE and target.endswith(".template")
    # Certificate and key come from paths the user must give: no default, no plaintext fallback.
    tls = {v["target"]: v["source"] for v in proxy["volumes"] if isinstance(v, dict)}
    assert tls[proxy["environment"]["NGINX_TLS_CERTIFICATE"]].startswith("${TURBO_TLS_CERT:?")
    assert tls[proxy["environment"]["NGINX_TLS_CERTIFICATE_KEY"]].startswith("${TURBO_TLS_KEY:?")
    # web trusts exactly that one proxy, and is reachable only through it.
    assert web["environment"]["TURBO_TRUSTED_PROXIES"] == "1"
    assert "ports" not in web
    assert proxy["environment"]["TURBO_UPSTREAM"] == "web:8000"
    assert "--bind :8000" in web["command"]


def test_compose_gives_the_nginx_template_every_variable_it_uses():
    used = set(re.findall(r"\$\{(\w+)\}", NGINX_TEMPLATE.read_text()))
    assert used == set(_compose()["services"]["proxy"]["environment"])


def test_the_proxy_idles_streams_longer_than_the_heartbeat():
    timeout = _compose()["services"]["proxy"]["environment"]["TURBO_STREAM_IDLE_TIMEOUT"]
    assert timeout.endswith("s") and int(timeout[:-1]) >= 2 * float(DEFAULTS["TURBO_PING_INTERVAL"])


# -- The compose file, checked by compose itself -------------------------------------------
#
# `make test` installs Debian's docker-compose (1.29, "v1"; Debian 13's package is v2).
# Whichever compose is installed checks the file; the check never skips it: a variant skips
# only when its own major version is absent and the other one is there (and runs).


@cache
def _installed_composes() -> dict[str, tuple[str, ...]]:
    """The compose commands that answer here, by major version: ``{"v1": ("docker-compose",)}``."""
    found: dict[str, tuple[str, ...]] = {}
    for tool in (("docker", "compose"), ("docker-compose",)):
        if shutil.which(tool[0]) is None:
            continue
        probe = subprocess.run(
            [*tool, "version", "--short"], capture_output=True, text=True, check=False
        )
        if probe.returncode != 0:
            # `docker` without its compose plugin is "no v2"; a broken docker-compose is a failure.
            assert tool[0] == "docker", f"{' '.join(tool)} is installed but broken: {probe.stderr}"
            continue
        major = probe.stdout.strip().lstrip("v").split(".")[0]
        found.setdefault(f"v{major}", tool)
    return found


def _compose_config(tool: tuple[str, ...], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in TLS_ENV and k != "SECRET_KEY"}
    return subprocess.run(
        [*tool, "-f", str(COMPOSE), "config"],
        capture_output=True, text=True, check=False, cwd=ROOT, env={**clean, **env},
    )  # fmt: skip


def _compose_tool(version: str) -> tuple[str, ...]:
    installed = _installed_composes()
    if version in installed:
        return installed[version]
    if not installed:
        pytest.fail("no docker compose installed: `make test` installs Debian's docker-compose")
    pytest.skip(f"compose {version} is not installed; {', '.join(installed)} checks the file")


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_compose_file_passes_compose_config(version):
    tool = _compose_tool(version)
    result = _compose_config(tool, {**TLS_ENV, "SECRET_KEY": "k" * 64})
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    assert set(services) >= {"redis", "install", "assets", "web", "worker", "beat", "proxy"}
    assert services["web"]["environment"]["TURBO_TRUSTED_PROXIES"] == "1"
    # The compose service named redis, on its default port.
    assert urlsplit(services["web"]["environment"]["REDIS_URL"]).hostname == "redis"
    sources = {str(v["source"]) if isinstance(v, dict) else v.split(":")[0]
               for v in services["proxy"]["volumes"]}  # fmt: skip
    assert set(TLS_ENV.values()) <= sources


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_compose_refuses_to_start_without_a_certificate(version):
    tool = _compose_tool(version)
    result = _compose_config(tool, {"SECRET_KEY": "k" * 64})
    assert result.returncode != 0
    assert "set TURBO_TLS_CERT to the path of your TLS certificate chain" in result.stderr


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_compose_refuses_to_start_without_a_secret_key(version):
    tool = _compose_tool(version)
    result = _compose_config(tool, TLS_ENV)
    assert result.returncode != 0
    assert "set SECRET_KEY to a long random string" in result.stderr


# -- What compose installs ----------------------------------------------------------------

#: Modules of the demo that compose does not run: `make run`'s launcher and its Redis.
LOCAL_ONLY = {"app/launcher.py", "app/embedded_redis.py"}


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _closure(names: set[str], extras: set[str]) -> set[str]:
    """The distributions ``names`` install, with their dependencies (``extras`` of turbocast's)."""
    found: set[str] = set()
    todo = [(name, extras if name == "turbocast" else set()) for name in names]
    while todo:
        name, wanted = todo.pop()
        if _canonical(name) in found:
            continue
        found.add(_canonical(name))
        for line in importlib.metadata.requires(name) or []:
            requirement = Requirement(line)
            marker = requirement.marker
            if marker is None or any(marker.evaluate({"extra": e}) for e in wanted or {""}):
                todo.append((requirement.name, set(requirement.extras)))
    return found


def _third_party_imports() -> set[str]:
    modules: set[str] = set()
    for path in [*(ROOT / "app").rglob("*.py"), *(ROOT / "workers").rglob("*.py")]:
        relative = path.relative_to(ROOT).as_posix()
        if relative.startswith("app/turbo/") or relative in LOCAL_ONLY:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    ours = {"__future__", "app", "workers", "turbocast"}
    return {m for m in modules - ours if m not in sys.stdlib_module_names}


def test_compose_installs_every_package_the_demo_imports():
    command = _compose()["services"]["install"]["command"][-1]
    extras = set(re.search(r"-e '\.\[([a-z,]+)\]'", command).group(1).split(","))  # type: ignore[union-attr]
    named = set(re.findall(r"'([A-Za-z][A-Za-z0-9_.\-]*)[\[<>=]", command))
    installed = _closure({"turbocast", *named}, extras)
    distributions = importlib.metadata.packages_distributions()
    missing = {
        module: distributions.get(module)
        for module in _third_party_imports()
        if not {_canonical(d) for d in distributions.get(module, [])} & installed
    }
    assert missing == {}, f"compose's install service leaves these out: {missing}"
