"""A recorded pid is judged by the process's start counted from boot, not by the wall clock."""

import os
import subprocess
import sys

from studio import processes


def test_a_stepped_wall_clock_does_not_make_a_live_process_look_dead():
    record = processes.identity(os.getpid())
    assert processes.is_alive(record)
    # A clock resync shifts every wall-clock start time by the step; the since-boot start is unmoved.
    stepped = {**record, "pid_created": record["pid_created"] - 60.0}
    assert processes.is_alive(stepped)


def test_a_reused_pid_is_a_stranger():
    record = processes.identity(os.getpid())
    reused = {**record, "pid_since_boot": record["pid_since_boot"] - 30.0}
    assert not processes.is_alive(reused)


def test_an_exited_process_is_not_alive():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    record = processes.identity(child.pid)
    child.wait()
    assert not processes.is_alive(record)


def test_older_records_with_only_a_wall_clock_start_still_work():
    record = processes.identity(os.getpid())
    old = {"pid": record["pid"], "pid_created": record["pid_created"]}
    assert processes.is_alive(old)
    assert not processes.is_alive({**old, "pid_created": old["pid_created"] + 600})
