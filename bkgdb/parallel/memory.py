"""glibc's malloc thresholds in Dask workers, so that large numpy temporaries are not mapped one by one.

``distributed``'s nanny starts every worker with ``MALLOC_TRIM_THRESHOLD_=65536``. Any such
variable turns glibc's adaptive mmap threshold off: it stays at 128 KiB, so every array of more
than 128 KiB is a fresh ``mmap`` whose pages fault in one by one, and is unmapped when freed.
A worker indexing H.E.S.S. DR1 spends about a fifth more CPU so. `tune_worker_malloc` (called
by bkgdb's Dask tasks) puts back the thresholds glibc's adaptive rule would reach.
"""

from __future__ import annotations

import ctypes
import logging
import os

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "tune_worker_malloc", "applied_malloc_settings"]

log = logging.getLogger(__name__)

#: ``mallopt`` parameters (glibc's ``malloc.h``).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: Blocks of this size or more are mapped: 32 MiB, where glibc's own adaptive threshold stops on
#: 64-bit systems (DR1's temporaries need 2 MiB; larger runs make larger ones).
MMAP_THRESHOLD = 32 * 2**20
#: Free memory at the top of a heap beyond this goes back to the system: twice the mmap threshold,
#: as glibc's adaptive rule sets it.
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD

#: What `tune_worker_malloc` set in this process (``{}``: nothing); None until it has run.
_applied: dict[str, int] | None = None


def _in_environment(variable: str, tunable: str) -> bool:
    """Whether glibc was given this malloc setting, as a variable or in ``GLIBC_TUNABLES``."""
    return variable in os.environ or f"glibc.malloc.{tunable}=" in os.environ.get("GLIBC_TUNABLES", "")


def tune_worker_malloc() -> dict[str, int]:
    """Give glibc's malloc fixed thresholds where its environment turned the adaptive ones off; once per process.

    Acts only when the environment sets the trim threshold (``MALLOC_TRIM_THRESHOLD_``, as
    ``distributed``'s nanny does for every worker) and not the mmap threshold. Without either,
    glibc adapts its thresholds itself and is left alone. Someone who set
    ``MALLOC_MMAP_THRESHOLD_`` chose how malloc maps memory, and is left alone too (setting it is
    how to keep a worker's malloc as its environment says).

    With the trim threshold fixed by the environment, glibc's mmap threshold stays at its
    initial 128 KiB: every numpy array beyond it is mapped and its pages faulted in anew, then
    unmapped when it is freed. A Dask worker indexing H.E.S.S. DR1 then spends about 20 % more
    CPU. Here the mmap threshold is set to `MMAP_THRESHOLD` (32 MiB, the most glibc's adaptive
    rule reaches) and the trim threshold to `TRIM_THRESHOLD` (twice that, as the rule does):
    freed blocks are reused, and free memory beyond 64 MiB at the top of a heap still goes back
    to the system, so a worker's memory does not grow with the runs it indexes (measured: a
    DR1 worker holds about 10 MiB more than with the nanny's setting, the same after every index).

    Nothing happens, silently, where malloc is not glibc's (macOS, musl, Windows).

    Returns
    -------
    dict
        The parameters set (``{"M_MMAP_THRESHOLD": bytes, "M_TRIM_THRESHOLD": bytes}``), ``{}`` if none.
    """
    global _applied
    if _applied is not None:
        return _applied
    applied: dict[str, int] = {}
    if _in_environment("MALLOC_TRIM_THRESHOLD_", "trim_threshold") and not _in_environment(
        "MALLOC_MMAP_THRESHOLD_", "mmap_threshold"
    ):
        try:
            libc = ctypes.CDLL(None)
            libc.gnu_get_libc_version  # only glibc has it  # noqa: B018
            mallopt = libc.mallopt
        except (OSError, AttributeError, TypeError):  # not glibc; TypeError: Windows has no CDLL(None)
            mallopt = None
        if mallopt is not None:
            for name, parameter, value in (
                ("M_MMAP_THRESHOLD", M_MMAP_THRESHOLD, MMAP_THRESHOLD),
                ("M_TRIM_THRESHOLD", M_TRIM_THRESHOLD, TRIM_THRESHOLD),
            ):
                if mallopt(ctypes.c_int(parameter), ctypes.c_int(value)) == 1:  # 0: refused
                    applied[name] = value
            log.debug("glibc malloc thresholds set in process %d: %s", os.getpid(), applied)
    _applied = applied
    return applied


def applied_malloc_settings() -> dict[str, int] | None:
    """What `tune_worker_malloc` set in this process (``{}``: nothing), or None if it has not run."""
    return None if _applied is None else dict(_applied)
