"""What every rule script shares: logging into the rule's log file, CPU threads pinned to the
rule's ``threads`` (so ``--cores all`` never oversubscribes the machine with BLAS threads), and the
job's peak memory (:func:`peak_rss`, the one reading of it: job logs and benchmarks)."""
from __future__ import annotations

import contextlib
import logging
import re
import resource
import sys
import time
from pathlib import Path
from typing import Iterator

_STATUS = Path("/proc/self/status")


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


@contextlib.contextmanager
def job(snakemake, *, name: str) -> Iterator[logging.Logger]:
    """Run a rule script's body with logging to ``snakemake.log[0]`` and stderr.

    An exception is logged with its message (which names the model and layer) and re-raised, so
    Snakemake marks the job failed and removes its outputs.
    """
    from threadpoolctl import threadpool_limits

    logger = logging.getLogger("zooscope")
    logger.setLevel(logging.INFO)
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handlers = [logging.StreamHandler(sys.stderr)]
    if snakemake.log:
        handlers.append(logging.FileHandler(snakemake.log[0], mode="w", encoding="utf-8"))
    for handler in handlers:
        handler.setFormatter(formatter)
        logger.addHandler(handler)
    wildcards = ", ".join(f"{k}={v}" for k, v in snakemake.wildcards.items())
    started = time.perf_counter()
    # which code ran: with two checkouts, each workflow's jobs run its own (the Snakefile)
    logger.info("%s (%s) with %d thread(s), zooscope from %s", name, wildcards, snakemake.threads,
                Path(__file__).resolve().parent)
    try:
        with threadpool_limits(limits=snakemake.threads):
            yield logger
    except Exception as error:
        logger.error("%s failed (%s): %s", name, wildcards, error, exc_info=True)
        raise
    finally:
        usage = resource.getrusage(resource.RUSAGE_SELF)  # the whole process: start-up and imports too
        logger.info("%s (%s) took %.1f s; process CPU %.1f s user, %.1f s system; peak RSS %.2f GiB",
                    name, wildcards, time.perf_counter() - started, usage.ru_utime, usage.ru_stime,
                    peak_rss() / 2**30)
        for handler in handlers:
            logger.removeHandler(handler)
            handler.close()
