"""What every rule script shares: logging into the rule's log file, CPU threads pinned to the
rule's ``threads`` (so ``--cores all`` never oversubscribes the machine with BLAS threads), the
job's peak memory (:func:`peak_rss`, the one reading of it: job logs and benchmarks), and, for the
per-model stages, a model's failure turned into a failure record (zooscope.failures).

Messages are read once (docs/failures.md): an error's one-line reason goes to the console
(stderr) once, its traceback only into the job's log file.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import json
import os
import re
import resource
import select
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Callable, Iterator, Sequence

from zooscope import io
from zooscope.config import ConfigError
from zooscope.failures import Failure, attempt, count_failure, first_failure

log = logging.getLogger("zooscope")
# Exit statuses of the worker process of a per-model job (run_model_job): its model failed, a
# setting of the run is wrong (zooscope.config.ConfigError: every model would fail alike), Ctrl-C.
_FAILED, _SETTING, _INTERRUPTED = 3, 4, 130
# How often the job checks that its snakemake process is alive (seconds).
WATCH_INTERVAL = 0.2
#: An environment variable: a cap (MB) on the resident memory the work of an esd or fit job may
#: add to what the job holds when its work starts. The job's process watches its worker and kills
#: it above the cap (as a cgroup's memory limit would), so that a model too large for the machine
#: fails as a model instead of drawing the kernel's out-of-memory killer onto the whole machine.
MEMORY_LIMIT_ENV = "ZOOSCOPE_JOB_MEMORY_LIMIT_MB"
_STATUS = Path("/proc/self/status")


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def retain_freed_memory(trim_threshold: int = 2**29, mmap_threshold: int = 2**25) -> bool:
    """Let glibc's malloc keep freed memory for reuse instead of handing it back to the kernel
    at each free: up to ``trim_threshold`` bytes at the top of the heap, and blocks below
    ``mmap_threshold`` (its maximum, 32 MiB) from the heap rather than from a mapping of their own.

    For the fit stage: the batched refits allocate and free arrays of a few MB thousands of times,
    and each returned array comes back as fresh pages, a page fault apiece (GPT-2's 50 fits: 540k
    minor faults and 0.38 s of system time in 0.78 s; retained: 38k, 0.04 s, 0.57 s, the peak
    memory the same within 5 MB; 2026-12-01). Both are needed: setting one fixes the other, which
    glibc otherwise raises as blocks are freed. Inherited by forked workers. False where the C
    library has no ``mallopt`` (not glibc: macOS, musl's does nothing)."""
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold)) and bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold))


def peak_rss() -> int:
    """This process's peak resident memory in bytes.

    Linux: ``VmHWM`` of /proc/self/status, the high-water mark of the process's own address
    space. Not getrusage's ``ru_maxrss``: Linux carries a parent's peak over fork and exec, so a
    job script that Snakemake (or any large process) starts would report at least its parent's
    memory (tests/test_jobs.py shows it). Without /proc (macOS, BSD) ``ru_maxrss`` is all there
    is: bytes on macOS, KiB elsewhere.
    """
    try:
        found = re.search(r"^VmHWM:\s+(\d+) kB", _STATUS.read_text(), re.MULTILINE)
    except OSError:
        found = None
    if found:
        return int(found.group(1)) * 1024
    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return usage if sys.platform == "darwin" else usage * 1024


class _ConsoleFormatter(logging.Formatter):
    """The console's line: the message, never the traceback (that goes to the log file)."""

    def format(self, record: logging.LogRecord) -> str:
        record = logging.makeLogRecord({**record.__dict__, "exc_info": None, "exc_text": None})
        return super().format(record)


class _FileOnly(logging.Filter):
    """Records logged with ``extra={"file_only": True}`` stay out of the console."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, "file_only", False)


def _wildcards(snakemake) -> str:
    return ", ".join(f"{k}={v}" for k, v in snakemake.wildcards.items())


@contextlib.contextmanager
def _logging(snakemake, name: str) -> Iterator[logging.Logger]:
    log.setLevel(logging.INFO)
    pattern = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(_ConsoleFormatter(pattern))
    console.addFilter(_FileOnly())
    handlers: list[logging.Handler] = [console]
    if snakemake.log:
        file_handler = logging.FileHandler(snakemake.log[0], mode="w", encoding="utf-8")
        file_handler.setFormatter(logging.Formatter(pattern))
        handlers.append(file_handler)
    for handler in handlers:
        log.addHandler(handler)
    started = time.perf_counter()
    # which code ran: with two checkouts, each workflow's jobs run its own (the Snakefile)
    log.info("%s (%s) with %d thread(s), zooscope from %s", name, _wildcards(snakemake), snakemake.threads,
             Path(__file__).resolve().parent)
    _WORKER_PEAK[0] = 0
    try:
        yield log
    finally:
        usage = resource.getrusage(resource.RUSAGE_SELF)  # the whole process: start-up and imports too
        children = resource.getrusage(resource.RUSAGE_CHILDREN)  # a per-model job's worker
        log.info("%s (%s) took %.1f s; process CPU %.1f s user, %.1f s system; peak RSS %.2f GiB",
                 name, _wildcards(snakemake), time.perf_counter() - started, usage.ru_utime + children.ru_utime,
                 usage.ru_stime + children.ru_stime, max(peak_rss(), _WORKER_PEAK[0]) / 2**30)
        for handler in handlers:
            log.removeHandler(handler)
            handler.close()
        exit_without_collecting()


# The peak RSS of the job's worker (a per-model job), which the worker reports when it ends.
_WORKER_PEAK = [0]


class ParentGone(RuntimeError):
    """The process that started this one died: nothing more is renamed into place."""


def _guard_outputs() -> None:
    """From now on, an output is renamed into place only while this process's parent (snakemake,
    or for a worker the job's process) is alive (zooscope.io.before_replace)."""
    parent = os.getppid()

    def check() -> None:
        if os.getppid() != parent:
            raise ParentGone(f"the process {parent} that started this job is gone: output not written")

    io.before_replace = check


def _log_hint(snakemake) -> str:
    return f" (traceback: {snakemake.log[0]})" if snakemake.log else ""


@contextlib.contextmanager
def job(snakemake, *, name: str) -> Iterator[logging.Logger]:
    """Run a zoo-level rule script's body with logging to ``snakemake.log[0]`` and stderr.

    An exception is logged (its reason on the console, its traceback in the log file) and the
    job exits with status 1, so Snakemake marks it failed and removes its outputs.
    """
    from threadpoolctl import threadpool_limits

    _guard_outputs()
    with _logging(snakemake, name):
        try:
            with threadpool_limits(limits=snakemake.threads):
                yield log
        except Exception as error:
            log.error("%s (%s) failed: %s%s", name, _wildcards(snakemake), error, _log_hint(snakemake),
                      exc_info=True)
            raise SystemExit(1) from None


def run_model_job(snakemake, *, name: str, stage: str, body: Callable[[logging.Logger], None],
                  write_failed: Callable[[Failure], None], record: str, upstream: Sequence[str] = (),
                  cap_memory: bool = False) -> None:
    """Run a per-model job; a failure of its model becomes a failure record (zooscope.failures).

    ``upstream``: the JSON inputs that may carry an earlier stage's failure record; with one, the
    job writes its outputs as that record (``write_failed``) without running ``body``. Otherwise
    ``body`` runs in a forked worker process, so that any way it can fail (an exception, a
    MemoryError under config's memory cap, the out-of-memory killer's SIGKILL, a crash in native
    code) is seen by this process, which then writes the failure record, counts the failure of
    the job whose JSON output is ``record`` (zooscope.failures.count_failure) and exits 0.
    Ctrl-C (SIGINT) or SIGTERM is an interruption, and a zooscope.config.ConfigError (a setting of
    the run, such as esd.device cuda without a GPU) no failure of the model: nothing is written
    and the job exits non-zero. When the snakemake process that started the job dies,
    the worker is killed and nothing more is written (docs/failures.md, "Interrupted runs").
    ``cap_memory``: the worker is killed when its resident memory grows by more than
    MEMORY_LIMIT_ENV (when set: the numpy stages esd and fit; torch's own libraries take more than a
    cap sized for a model's matrices would allow).
    """
    _guard_outputs()
    with _logging(snakemake, name):
        failure = first_failure(upstream)
        if failure is not None:
            log.info("%s of %s not run: its %s stage failed: %s", name, _wildcards(snakemake), failure.stage,
                     failure.reason, extra={"file_only": True})
            write_failed(failure)
            return
        status, reason = _run_worker(snakemake, body, cap_memory)
        if status == "ok":
            return
        if status == "interrupted":
            log.warning("%s (%s) interrupted: %s", name, _wildcards(snakemake), reason)
            raise SystemExit(_INTERRUPTED)
        if status == "setting":  # not the model's failure: the job fails, as a zoo-level job would
            log.error("%s (%s) failed: %s", name, _wildcards(snakemake), reason)
            raise SystemExit(1)
        log.error("%s of %s failed: %s%s; the zoo tables list the model as failed and the next run "
                  "retries it", name, _wildcards(snakemake), reason, _log_hint(snakemake))
        write_failed(Failure(stage=stage, reason=reason, attempt=attempt(record)))
        count_failure(record)


def _run_worker(snakemake, body, cap_memory: bool) -> tuple[str, str]:
    """Fork a worker that runs ``body``; ("ok" | "failed" | "interrupted", reason)."""
    snakemake_pid = os.getppid()  # the process that started this job (snakemake, here or on a node)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the worker
        os.close(read_end)
        code = _FAILED
        try:  # the worker never returns into the job's code, whatever happens
            _die_with_parent()
            _guard_outputs()
            code = _worker(snakemake, body, write_end)
        finally:
            os._exit(code)
    os.close(write_end)
    cap = _memory_cap() if cap_memory else None
    start, over = _rss(pid), None
    exit_watch = _exit_watch(pid)
    try:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if cap is not None and over is None and _rss(pid) - start > cap:
                over = (f"out of memory: the job's work used more than {cap / 2**20:g} MB of memory, the cap "
                        f"of {MEMORY_LIMIT_ENV}")
                os.kill(pid, signal.SIGKILL)
            if os.getppid() != snakemake_pid:  # snakemake died: this job's outputs are not wanted
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                log.warning("the snakemake process %d that started this job is gone: stopped without "
                            "writing its outputs", snakemake_pid)
                os._exit(_INTERRUPTED)
            if exit_watch is None:
                time.sleep(WATCH_INTERVAL)
            else:  # wakes as soon as the worker exits: a job ends with its work, not up to an interval later
                select.select([exit_watch], [], [], WATCH_INTERVAL)
    except KeyboardInterrupt:  # Ctrl-C reached the whole process group: the worker stops too
        os.waitpid(pid, 0)
        return "interrupted", "Ctrl-C (SIGINT)"
    finally:
        if exit_watch is not None:
            os.close(exit_watch)
    with os.fdopen(read_end, encoding="utf-8", errors="replace") as pipe:
        try:
            report = json.loads(pipe.read() or "{}")
        except ValueError:
            report = {}
    reason, _WORKER_PEAK[0] = str(report.get("reason", "")).strip(), int(report.get("peak_rss", 0))
    if over is not None:
        return "failed", over
    if os.WIFEXITED(status):
        code = os.WEXITSTATUS(status)
        if code == 0:
            return "ok", ""
        if code == _INTERRUPTED:
            return "interrupted", reason or "interrupted"
        if code == _SETTING:
            return "setting", reason
        return "failed", reason or (f"the job's worker exited with status {code} without a Python error "
                                    "(native code; its own message, if any, is on the console)")
    number = os.WTERMSIG(status)
    if number in (signal.SIGINT, signal.SIGTERM):
        return "interrupted", f"stopped by {signal.Signals(number).name}"
    name = signal.Signals(number).name
    hint = " (the kernel's out-of-memory killer, a job memory limit, or kill -9)" if number == signal.SIGKILL else ""
    return "failed", f"the job was killed by {name}{hint}"


def _exit_watch(pid: int) -> int | None:
    """A file descriptor that becomes readable when process ``pid`` exits (Linux 5.3+: a pidfd),
    or None where there is none (then the watch loop sleeps its interval)."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def _worker(snakemake, body, write_end: int) -> int:
    """The worker's body; its exit status. The reason of a failure goes to the parent by a pipe."""
    from threadpoolctl import threadpool_limits

    try:
        with threadpool_limits(limits=snakemake.threads):
            body(log)
        code, reason = 0, ""
    except KeyboardInterrupt:
        code, reason = _INTERRUPTED, "Ctrl-C (SIGINT)"
    except ConfigError as error:
        code, reason = _SETTING, str(error)
        log.info("traceback:\n%s", traceback.format_exc(), extra={"file_only": True})
    except MemoryError as error:
        code, reason = _FAILED, f"out of memory: {error or 'MemoryError'}"
        log.info("traceback:\n%s", traceback.format_exc(), extra={"file_only": True})
    except BaseException as error:  # noqa: BLE001 - every failure of the model becomes its record
        code, reason = _FAILED, str(error) or type(error).__name__
        log.info("traceback:\n%s", traceback.format_exc(), extra={"file_only": True})
    with os.fdopen(write_end, "w", encoding="utf-8") as pipe:
        # one line, and short: the pipe is read once the worker has exited, so it must not fill up
        json.dump({"reason": " ".join(reason.split())[:4000], "peak_rss": peak_rss()}, pipe)
    for handler in log.handlers:
        handler.flush()
    return code


def _memory_cap() -> int | None:
    """MEMORY_LIMIT_ENV in bytes (None: unset)."""
    limit = os.environ.get(MEMORY_LIMIT_ENV, "").strip()
    return int(float(limit) * 2**20) if limit else None


def _rss(pid: int) -> int:
    """A process's resident memory now (Linux: VmRSS), 0 where unknown."""
    with contextlib.suppress(OSError, StopIteration, ValueError):
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            return int(next(line for line in status if line.startswith("VmRSS:")).split()[1]) * 1024
    return 0


def _die_with_parent() -> None:
    """Linux: the worker gets SIGKILL when the job's process dies (a killed or cancelled job)."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@functools.cache  # registered once, however often called
def exit_without_collecting() -> None:
    """Let this process's exit skip the garbage collector's passes over what it holds then.

    For the end of a job and of a Snakemake run. The interpreter's teardown collects every object
    still alive in passes over all of them; ``gc.freeze`` at exit (atexit runs before the
    teardown) moves them out of the collector's reach, and reference counting still frees them.
    Measured 2026-12-01: Snakemake's process exited 0.2-0.35 s after the run's last job, 0.04 s
    with it; an esd job's process 10-20 ms sooner, the aggregate's (pandas) 40-50 ms, each on a
    run's critical path. In a test's process it acts only when that process ends.
    """
    import atexit
    import gc

    atexit.register(gc.freeze)


def cancel_pending_timers() -> int:
    """Cancel this process's pending ``threading.Timer``s; the number cancelled.

    For the end of a Snakemake run (the workflow's onsuccess and onerror). Snakemake's job rate
    limiter (``--max-jobs-per-timespan``, default 100 per second) starts a non-daemon one-second
    ``threading.Timer`` after every scheduling round, and Python waits for the last one before the
    process exits: every run would end up to a second after its last job (measured: 0.9 s; a 5%
    of the WeightWatcher benchmark's run). Once the workflow is done no timer has work left.
    """
    import threading

    timers = [thread for thread in threading.enumerate() if isinstance(thread, threading.Timer) and thread.is_alive()]
    for timer in timers:
        timer.cancel()
    return len(timers)
