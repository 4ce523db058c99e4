"""Fold the results of a partial re-run into bench/results/run-<n>.json.

    python -m bench.merge DIR   # DIR/run-<n>.json replaces the matching workload × target entries

Used when one target is measured again after a change (the command is recorded).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bench.run import RESULTS


def main() -> None:
    partial = Path(sys.argv[1])
    for path in sorted(partial.glob("run-*.json")):
        update = json.loads(path.read_text())
        target = RESULTS / path.name
        results = json.loads(target.read_text())
        for workload, entries in update["workloads"].items():
            results["workloads"].setdefault(workload, {}).update(entries)
        results.setdefault("reruns", []).append(update["command"])
        target.write_text(json.dumps(results, indent=1, default=str))
        print(f"merged {path} into {target}")


if __name__ == "__main__":
    main()
