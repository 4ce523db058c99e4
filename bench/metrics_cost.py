"""What counting costs the relay per delivered message: metrics on, and off.

Each variant runs in a fresh process, so prometheus-client is imported with its own
environment: ``multiprocess`` (``PROMETHEUS_MULTIPROC_DIR`` set, files on an mmap, as
under gunicorn with several workers), ``single`` (one process's values in memory) and
``off`` (``TURBO_METRICS=0``: the no-op metrics). Each times
:func:`turbocast.metrics.relayed`, the call the relay's thread makes once per message
after handing it to its sockets (the fan-out is one number, so the cost does not
depend on it), and prints CPU microseconds per message. The peer of each row is
``off``, measured in the same run.

    python -m bench.metrics_cost
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

ROUNDS = 200_000

_CHILD = """
import json, time
from turbocast import metrics
from turbocast.message import Message
message = Message(b"turbo:session:x", "s", "1-0", b"<turbo-stream></turbo-stream>",
                  published=time.time())
out = {}
for sockets in (1, 1000):
    start = time.process_time()
    for _ in range(%d):
        metrics.relayed(message, sockets)
    out[sockets] = (time.process_time() - start) / %d * 1e6
print(json.dumps(out))
"""


def measure(env: dict[str, str]) -> dict[str, float]:
    code = _CHILD % (ROUNDS, ROUNDS)
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "TURBO_METRICS": "1", **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return {int(k): v for k, v in json.loads(result.stdout).items()}


def main() -> None:
    with tempfile.TemporaryDirectory() as directory:
        rows = {
            "multiprocess": measure({"PROMETHEUS_MULTIPROC_DIR": directory}),
            "single": measure({"PROMETHEUS_MULTIPROC_DIR": ""}),
            "off": measure({"TURBO_METRICS": "0", "PROMETHEUS_MULTIPROC_DIR": ""}),
        }
    print("| metrics | CPU µs per message, to 1 socket | to 1,000 sockets |")
    print("|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row[1]:.2f} | {row[1000]:.2f} |")


if __name__ == "__main__":
    main()
