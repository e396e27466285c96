"""Who a recorded pid is: the identity of a process the studio spawned, kept in a JSON record, so a
later look (another tick, a restarted app) can tell the same process from a stranger that reused
its pid.

The identity is the pid plus the process's start time counted from boot (the kernel's own clock
ticks), and the boot it belongs to. Neither moves when the wall clock is stepped (a virtual machine
resyncing its clock shifts every wall-clock start time by the step, which once made a live run look
dead). Records that carry only the older wall-clock `pid_created` are still judged, with slack.
"""

from __future__ import annotations

from pathlib import Path

import psutil

BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def _boot_id() -> str | None:
    try:
        return BOOT_ID.read_text().strip() or None
    except OSError:
        return None


def _since_boot(proc: psutil.Process) -> float | None:
    """Seconds from boot to the process's start, on platforms that expose it (Linux)."""
    try:
        return float(proc._proc.create_time(monotonic=True))
    except (AttributeError, TypeError):
        return None


def identity(pid: int) -> dict:
    """{"pid", "pid_created" (wall clock, for people), "pid_since_boot", "boot_id"} of a live pid."""
    proc = psutil.Process(int(pid))
    return {
        "pid": proc.pid,
        "pid_created": proc.create_time(),
        "pid_since_boot": _since_boot(proc),
        "boot_id": _boot_id(),
    }


def is_alive(record: dict) -> bool:
    """Is the process `record` names (see `identity`) still running, and still the same process?"""
    pid = record.get("pid")
    if not pid:
        return False
    try:
        proc = psutil.Process(int(pid))
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        since_boot, boot = record.get("pid_since_boot"), record.get("boot_id")
        if since_boot is not None and boot is not None and boot == _boot_id():
            now = _since_boot(proc)
            if now is not None:
                return abs(now - float(since_boot)) < 0.05
        created = record.get("pid_created")
        # older records: a reused pid started much later; the slack absorbs a stepped wall clock
        return created is None or abs(proc.create_time() - float(created)) < 5.0
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return False
