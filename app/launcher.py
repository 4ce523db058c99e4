"""What ``make run`` runs: Redis (embedded unless REDIS_URL is set) and every Procfile process.

honcho runs the Procfile's processes, each in its own process group; one
Ctrl-C (SIGINT) or SIGTERM stops all of them, then the embedded Redis.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import sys
import tempfile
from pathlib import Path

from honcho.environ import parse_procfile
from honcho.manager import Manager

from app.embedded_redis import EmbeddedRedis

ROOT = Path(__file__).resolve().parent.parent
#: This checkout's own SECRET_KEY, made by the first `make run`: Flask's instance folder
#: holds what stays out of version control.
KEY_FILE = ROOT / "instance" / "secret_key"


def checkout_secret_key(path: Path = KEY_FILE) -> str:
    """Return the key kept at ``path``, making a random one (readable by its owner only) once.

    The same key across runs, so a browser's session survives a restart of ``make run``;
    a different one in every checkout, so no two installs share it.

    :param path: where the key is kept.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        key = path.read_text().strip()
        if not key:
            raise SystemExit(f"{path} is empty: delete it and `make run` makes a new key") from None
        return key
    key = secrets.token_hex(32)
    with os.fdopen(fd, "w") as file:
        file.write(key + "\n")
    return key


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--procfile", default=str(ROOT / "Procfile"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "5000")))
    args = parser.parse_args(argv)

    procfile = parse_procfile(Path(args.procfile).read_text())
    env = dict(os.environ)
    env["PORT"] = str(args.port)
    env.setdefault("PYTHONUNBUFFERED", "1")
    if not env.get("SECRET_KEY"):
        # One key for every process, so they all accept the same cookies.
        env["SECRET_KEY"] = checkout_secret_key()
        print(f"turbocast: SECRET_KEY not set; using this checkout's key ({KEY_FILE})", flush=True)
    # Processes find their commands (gunicorn, celery) next to this interpreter.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"

    redis = None
    if not env.get("REDIS_URL"):
        redis = EmbeddedRedis().start()
        env["REDIS_URL"] = redis.url
        print(f"turbocast: embedded Redis at {redis.url} ({redis.executable})", flush=True)
    # gunicorn's workers write their Prometheus metrics to files there, read by /metrics:
    # an empty directory each run, for the web process only (prometheus-client's
    # multiprocess mode).
    metrics_dir = None
    if not env.get("PROMETHEUS_MULTIPROC_DIR"):
        metrics_dir = tempfile.mkdtemp(prefix="turbocast-metrics-")
        print(f"turbocast: metrics of the web workers in {metrics_dir} (/metrics)", flush=True)
    try:
        manager = Manager()
        for name, command in procfile.processes.items():
            process_env = env
            if name == "web" and metrics_dir is not None:
                process_env = {**env, "PROMETHEUS_MULTIPROC_DIR": metrics_dir}
            manager.add_process(name, command, env=process_env, cwd=str(ROOT))
        url = f"http://127.0.0.1:{args.port}/"
        print(f"turbocast: open {url}  (Ctrl-C stops everything)", flush=True)
        manager.loop()
        return int(manager.returncode or 0)
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
        if redis is not None:
            redis.close()
            print("turbocast: embedded Redis stopped", flush=True)


if __name__ == "__main__":
    sys.exit(main())
