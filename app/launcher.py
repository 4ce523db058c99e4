"""What ``make run`` runs: Redis (embedded unless REDIS_URL is set) and every Procfile process.

honcho runs the Procfile's processes, each in its own process group; one
Ctrl-C (SIGINT) or SIGTERM stops all of them, then the embedded Redis.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from pathlib import Path

from honcho.environ import parse_procfile
from honcho.manager import Manager

from app.embedded_redis import EmbeddedRedis

ROOT = Path(__file__).resolve().parent.parent


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
        # One key for every process of this run, so they all accept the same cookies.
        env["SECRET_KEY"] = secrets.token_hex(32)
        print("turbocast: SECRET_KEY not set; using a random one for this run", flush=True)
    # Processes find their commands (gunicorn, celery) next to this interpreter.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"

    redis = None
    if not env.get("REDIS_URL"):
        redis = EmbeddedRedis().start()
        env["REDIS_URL"] = redis.url
        print(f"turbocast: embedded Redis at {redis.url} ({redis.executable})", flush=True)
    try:
        manager = Manager()
        for name, command in procfile.processes.items():
            manager.add_process(name, command, env=env, cwd=str(ROOT))
        url = f"http://127.0.0.1:{args.port}/"
        print(f"turbocast: open {url}  (Ctrl-C stops everything)", flush=True)
        manager.loop()
        return int(manager.returncode or 0)
    finally:
        if redis is not None:
            redis.close()
            print("turbocast: embedded Redis stopped", flush=True)


if __name__ == "__main__":
    sys.exit(main())
