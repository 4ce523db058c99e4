"""The Procfile and docker-compose.yml say exactly how production runs."""

from __future__ import annotations

import shutil
import subprocess
from urllib.parse import urlsplit

import pytest
import yaml
from honcho.environ import parse_procfile

from tests.support import ROOT

COMPOSE = ROOT / "docker-compose.yml"


def _procfile() -> dict[str, str]:
    return dict(parse_procfile((ROOT / "Procfile").read_text()).processes)


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


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
    assert web.startswith("gunicorn -c python:app.turbo.gunicorn_hooks --bind :8000")
    assert "--threads 100" in web
    assert services["beat"]["command"].startswith("celery -A workers.celery beat")


@pytest.mark.parametrize("tool", [["docker", "compose"], ["docker-compose"]], ids=["v2", "v1"])
def test_compose_file_passes_compose_config(tool):
    if shutil.which(tool[0]) is None:
        pytest.skip(f"{tool[0]} is not installed")
    probe = subprocess.run([*tool, "version"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"{' '.join(tool)} is not available: {probe.stderr.strip()[:200]}")
    result = subprocess.run(
        [*tool, "-f", str(COMPOSE), "config", "--quiet"],
        capture_output=True, text=True, check=False, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
