"""A share of one core for the server under test: a CPU cgroup with a bandwidth quota.

On this two-core machine the load side (Redis, the publisher and the load generator) has
one core, and a server with a whole core of its own is never its limit: W2 then measures
the load side. Capping the server at a fraction of its core (the same fraction for every
target) makes the server the limit at a rate the load side can exceed, so CPU per
message is measured at saturation. The quota is the kernel's CFS bandwidth control:
``cpu.max`` under cgroup v2, ``cpu.cfs_quota_us`` and ``cpu.cfs_period_us`` under v1.
Needs root; where no cgroup can be made, :func:`make` returns ``None`` and the run says so.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

V2_ROOT = Path("/sys/fs/cgroup")
V1_ROOT = Path("/sys/fs/cgroup/cpu")
#: The bandwidth period: short, so a throttled server runs in 2.5 ms slices, not 25 ms.
PERIOD_US = 10_000


class CpuShare:
    """A cgroup whose processes get at most ``share`` of one CPU together, while capped.

    It starts uncapped, so servers start and take their sockets at full speed; the
    measurement caps it (:meth:`cap`) and lifts the cap after (:meth:`lift`).
    """

    def __init__(self, directory: Path, share: float, v2: bool) -> None:
        self.directory, self.share, self.v2 = directory, share, v2

    def join(self) -> None:
        """Put the calling process (and what it forks afterwards) in the cgroup.

        Meant as ``subprocess.Popen(preexec_fn=share.join)``: in the child, before exec,
        so a server's workers are forked inside it.
        """
        (self.directory / "cgroup.procs").write_text(str(os.getpid()))

    def cap(self) -> None:
        self._quota(int(PERIOD_US * self.share))

    def lift(self) -> None:
        self._quota(None)

    def _quota(self, quota: int | None) -> None:
        if self.v2:
            (self.directory / "cpu.max").write_text(f"{quota or 'max'} {PERIOD_US}")
        else:
            (self.directory / "cpu.cfs_quota_us").write_text(str(quota or -1))

    def periods(self) -> tuple[int, int]:
        """``(periods, throttled)``: the quota periods in which the cgroup ran so far, and
        how many of them it used up its quota in and was held back."""
        stat = dict(line.split() for line in (self.directory / "cpu.stat").read_text().splitlines())
        return int(stat.get("nr_periods", 0)), int(stat.get("nr_throttled", 0))

    def remove(self) -> None:
        """Kill what is left in the cgroup (a server's orphaned workers), then delete it.

        :raises OSError: when the cgroup cannot be deleted.
        """
        with contextlib.suppress(OSError):
            self.lift()
        deadline = time.monotonic() + 10
        while self.directory.exists():
            try:
                pids = [int(p) for p in (self.directory / "cgroup.procs").read_text().split()]
            except OSError:
                pids = []
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            try:
                self.directory.rmdir()
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)  # the killed processes are reaped by their parents


def make(name: str, share: float) -> CpuShare | None:
    """A new cgroup that :meth:`CpuShare.cap` limits to ``share`` of a CPU, or ``None``
    where none can be made."""
    v2 = (V2_ROOT / "cgroup.controllers").exists()
    directory = (V2_ROOT if v2 else V1_ROOT) / name
    made = CpuShare(directory, max(1000, int(PERIOD_US * share)) / PERIOD_US, v2)
    try:
        directory.mkdir(exist_ok=True)
        if not v2:
            (directory / "cpu.cfs_period_us").write_text(str(PERIOD_US))
        made.cap()  # can it be capped at all?
        made.lift()
    except OSError:
        with contextlib.suppress(OSError):
            directory.rmdir()
        return None
    return made
