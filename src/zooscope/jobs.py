"""What every rule script shares: logging into the rule's log file and CPU threads pinned to the
rule's ``threads`` (so ``--cores all`` never oversubscribes the machine with BLAS threads)."""
from __future__ import annotations

import contextlib
import logging
import resource
import sys
import time
from typing import Iterator


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
    logger.info("%s (%s) with %d thread(s)", name, wildcards, snakemake.threads)
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
                    usage.ru_maxrss / 2**20)
        for handler in handlers:
            logger.removeHandler(handler)
            handler.close()
