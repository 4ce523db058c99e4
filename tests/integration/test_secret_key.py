"""The demo's processes exit non-zero, saying why, when SECRET_KEY is unset."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.config import UNSIGNED_REFUSAL
from tests.support import ROOT

BIN = Path(sys.executable).parent
COMMANDS = {
    "web": [str(BIN / "gunicorn"), "-c", "python:turbocast.gunicorn_hooks",
            "--bind", "127.0.0.1:0", "--threads", "4", "app:create_app()"],
    "worker": [str(BIN / "celery"), "-A", "workers.celery", "worker", "--concurrency", "1"],
    "beat": [str(BIN / "celery"), "-A", "workers.celery", "beat"],
}  # fmt: skip


@pytest.mark.parametrize("process", sorted(COMMANDS))
def test_the_demo_exits_non_zero_without_a_secret_key(process, redis_url, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("SECRET_KEY", "FLASK_DEBUG")}
    env["REDIS_URL"] = redis_url
    result = subprocess.run(
        COMMANDS[process], cwd=ROOT, env=env, capture_output=True, text=True, timeout=90
    )
    assert result.returncode != 0
    assert UNSIGNED_REFUSAL in result.stdout + result.stderr
