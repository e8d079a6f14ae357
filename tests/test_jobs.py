"""zooscope.jobs: a job's own peak memory (not its parent's), its end (timers, the worker's exit)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from zooscope.jobs import cancel_pending_timers, peak_rss

SRC = str(Path(__file__).resolve().parents[1] / "src")
CHILD = ("import resource, sys; sys.path.insert(0, sys.argv[1]); from zooscope.jobs import peak_rss; "
         "print(peak_rss(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)")


def test_peak_rss_is_what_the_process_touched():
    """A fresh interpreter writes 300 MiB and lets it go: its peak is those 300 MiB plus the
    interpreter's own few tens of MiB, and stays there after the memory is freed."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from zooscope.jobs import peak_rss; "
            "block = b'\\x01' * (300 * 2**20); del block; print(peak_rss())")
    peak = int(subprocess.run([sys.executable, "-c", code, SRC], capture_output=True, text=True, check=True).stdout)
    assert 300 * 2**20 <= peak < 400 * 2**20
    assert peak_rss() > 0  # and in this process too


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="Linux: VmHWM of /proc/self/status")
def test_a_child_of_a_large_process_reports_its_own_peak_not_its_parents():
    """Why not ru_maxrss: Linux carries the parent's peak over fork and exec. A parent holding
    400 MiB starts a small interpreter: ru_maxrss says 400 MiB or more, peak_rss the child's own."""
    held = b"\x01" * (400 * 2**20)  # written: resident in this (the parent) process
    own, inherited = map(int, subprocess.run([sys.executable, "-c", CHILD, SRC], capture_output=True, text=True,
                                             check=True).stdout.split())
    assert inherited >= len(held)  # what a job log said before: the parent's memory
    assert own < 150 * 2**20  # a bare interpreter and zooscope.jobs: tens of MiB
    del held


def test_pending_timers_are_cancelled_at_the_end_of_a_run():
    """Snakemake's rate limiter leaves one-second non-daemon timers; the run's end cancels them,
    so that the process exits without waiting for them (and never runs their action)."""
    import threading

    fired = []
    timers = [threading.Timer(60.0, fired.append, args=(i,)) for i in range(2)]
    for timer in timers:
        timer.start()
    assert cancel_pending_timers() >= 2
    for timer in timers:
        timer.join(timeout=5.0)
        assert not timer.is_alive()
    assert fired == [] and cancel_pending_timers() == 0


def test_a_process_that_asks_freezes_its_objects_at_exit_once_and_nothing_before():
    """exit_without_collecting defers gc.freeze to the process's exit (atexit runs before the
    interpreter's teardown collects): nothing is frozen while the process works, everything at
    the end, and calling it twice registers it once. In a fresh interpreter, as a job's process."""
    script = """
import atexit, gc
start = gc.get_freeze_count()  # 0 on Python 3.11; 3.12 counts some of the interpreter's own objects
calls, freeze = [], gc.freeze
gc.freeze = lambda: calls.append(1) or freeze()  # counts the freezes
from zooscope.jobs import exit_without_collecting
atexit.register(lambda: print("at exit", len(calls), gc.get_freeze_count() > start))  # after: LIFO
exit_without_collecting()
exit_without_collecting()
print("before", len(calls), gc.get_freeze_count() - start)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.split("\n")[:2] == ["before 0 0", "at exit 1 True"]


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="Linux 5.3+: pidfd_open")
def test_the_worker_watch_wakes_when_the_worker_exits_not_an_interval_later():
    """A job's watch loop waits on the worker's exit (a pidfd), not on a sleep of WATCH_INTERVAL:
    the descriptor is not readable while the worker runs, and readable once it has exited."""
    import select

    from zooscope.jobs import _exit_watch

    release_read, release_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the worker: runs until released
        os.read(release_read, 1)
        os._exit(0)
    watch = _exit_watch(pid)
    try:
        assert watch is not None
        assert select.select([watch], [], [], 0)[0] == []  # still running
        os.write(release_write, b"x")
        assert select.select([watch], [], [], 30)[0] == [watch]  # readable at its exit
        assert os.waitpid(pid, 0)[1] == 0
    finally:
        os.close(watch)
        os.close(release_read)
        os.close(release_write)


RETAIN = """
import resource, sys
sys.path.insert(0, sys.argv[1])
import numpy as np
from zooscope.fits.powerlaw import fit_sorted_rows
from zooscope.jobs import retain_freed_memory

print(retain_freed_memory() if sys.argv[2] == "retain" else False)
rng = np.random.default_rng(0)
# bootstrap-like batches: 100 sorted power-law samples of a few tail sizes
batches = [np.sort((1 - rng.random((100, k))) ** (-1 / 2.5), axis=1) for k in (3000, 700, 1500, 300)]
fit_sorted_rows(batches[0][:2])  # imports and first allocations before counting
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    for batch in batches:
        fit_sorted_rows(batch)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's mallopt")
def test_retained_freed_memory_spares_the_refits_page_faults():
    """The batched refits allocate and free arrays of a few MB over and over: by default glibc
    hands many of them back to the kernel, and each comes back as fresh pages, a fault apiece;
    retained, they are reused (the fit job's setting)."""
    counts = {}
    for mode in ("default", "retain"):
        done = subprocess.run([sys.executable, "-c", RETAIN, SRC, mode], capture_output=True, text=True,
                              check=True, env={**os.environ, "NUMPY_MADVISE_HUGEPAGE": "0"})
        applied, faults = done.stdout.split()
        counts[mode] = int(faults)
        assert applied == ("True" if mode == "retain" else "False")
    assert counts["retain"] < counts["default"] / 2, counts
