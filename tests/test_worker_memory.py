"""Dask workers started by a nanny get glibc malloc thresholds that let freed numpy arrays be reused.

The nanny's ``MALLOC_TRIM_THRESHOLD_`` fixes glibc's mmap threshold at 128 KiB, so that every
large array is mapped anew; `bkgdb.parallel.memory.tune_worker_malloc`, run by bkgdb's tasks,
raises it. A real `distributed.LocalCluster` worker is probed before and after one bkgdb task.
"""

import ctypes
import os
import sys

import pytest

from bkgdb.parallel import memory

MiB = 2**20


def mapped_allocations(n_bytes=4 * MiB, times=2):
    """Whether each of ``times`` numpy arrays of ``n_bytes``, allocated, written and freed in turn, was mapped.

    glibc marks a block it got from ``mmap`` (and unmaps when freed) with the IS_MMAPPED bit (2)
    of the size word just before the block; numpy allocates the data of arrays this large with
    ``malloc``.
    """
    import numpy as np

    mapped = []
    for _ in range(times):
        array = np.empty(n_bytes, dtype=np.uint8)
        array.fill(1)
        size_word = ctypes.c_size_t.from_address(array.ctypes.data - ctypes.sizeof(ctypes.c_size_t)).value
        mapped.append(bool(size_word & 2))
        del array
    return mapped


def glibc():
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018
        return True
    except (OSError, AttributeError, TypeError):
        return False


@pytest.fixture(scope="module")
def nanny_cluster():
    """One worker process with the environment `distributed`'s nanny gives it by default.

    If a future `distributed` no longer sets ``MALLOC_TRIM_THRESHOLD_``, it is set here as it
    used to be, so that the case stays tested.
    """
    distributed = pytest.importorskip("distributed")
    import dask

    # The nanny's setting wins over a user's dask config, and nothing in this process's environment
    # (a nanny copies its variables into it, and they would override the config) decides for it.
    environ = {**dask.config.get("distributed.nanny.pre-spawn-environ"), "MALLOC_TRIM_THRESHOLD_": 65536}
    environ.pop("MALLOC_MMAP_THRESHOLD_", None)
    saved = dict(os.environ)
    for name in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_"):
        os.environ.pop(name, None)
    try:
        with (
            dask.config.set({"distributed.nanny.pre-spawn-environ": environ}),
            distributed.LocalCluster(
                n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=40
            ) as cluster,
            distributed.Client(cluster, set_as_default=False) as client,
        ):
            yield client
    finally:
        os.environ.clear()
        os.environ.update(saved)


@pytest.mark.skipif(not sys.platform.startswith("linux") or not glibc(), reason="glibc's malloc only")
def test_a_nanny_worker_reuses_freed_arrays_after_one_bkgdb_task(nanny_cluster):
    from bkgdb.parallel.cluster import DaskExecutor

    client = nanny_cluster
    (environment,) = client.run(lambda: __import__("os").environ.get("MALLOC_TRIM_THRESHOLD_")).values()
    assert environment is not None
    # As the nanny starts it: nothing set yet, and each 4 MiB array is mapped and unmapped.
    assert list(client.run(memory.applied_malloc_settings).values()) == [None]
    assert list(client.run(mapped_allocations).values()) == [[True, True]]

    with DaskExecutor(client) as executor:
        assert sorted(executor.imap_unordered(abs, [-1, 2])) == [1, 2]

    applied = {"M_MMAP_THRESHOLD": memory.MMAP_THRESHOLD, "M_TRIM_THRESHOLD": memory.TRIM_THRESHOLD}
    assert list(client.run(memory.applied_malloc_settings).values()) == [applied]
    # The freed block is reused: neither allocation is mapped, in the task's thread or the worker's main one.
    assert list(client.run(mapped_allocations).values()) == [[False, False]]
    assert client.submit(mapped_allocations, pure=False).result() == [False, False]
    # Once per process: a later task changes nothing.
    with DaskExecutor(client) as executor:
        assert list(executor.imap_unordered(abs, [-3], batched=False)) == [3]
    assert list(client.run(memory.applied_malloc_settings).values()) == [applied]


class FakeLibc:
    """A C library with glibc's names whose ``mallopt`` records its calls."""

    def __init__(self):
        self.calls = []

    def gnu_get_libc_version(self):
        return b"2.36"

    def mallopt(self, parameter, value):
        self.calls.append((parameter.value, value.value))
        return 1


@pytest.fixture
def fresh(monkeypatch):
    """`tune_worker_malloc` not yet run in this process, with a fake C library; restored afterwards."""
    monkeypatch.setattr(memory, "_applied", None)
    libc = FakeLibc()
    monkeypatch.setattr(memory.ctypes, "CDLL", lambda name: libc)
    for variable in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES"):
        monkeypatch.delenv(variable, raising=False)
    return libc


def test_thresholds_are_set_once_and_only_where_the_environment_fixed_the_trim_threshold(fresh, monkeypatch):
    assert memory.tune_worker_malloc() == {}  # glibc adapts by itself
    assert fresh.calls == []

    monkeypatch.setattr(memory, "_applied", None)
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")  # chosen by someone: left alone
    assert memory.tune_worker_malloc() == {}
    assert fresh.calls == []

    monkeypatch.setattr(memory, "_applied", None)
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
    expected = {"M_MMAP_THRESHOLD": 32 * MiB, "M_TRIM_THRESHOLD": 64 * MiB}
    assert memory.tune_worker_malloc() == expected
    assert memory.tune_worker_malloc() == expected
    assert fresh.calls == [(-3, 32 * MiB), (-1, 64 * MiB)]  # once
    assert memory.applied_malloc_settings() == expected

    monkeypatch.setattr(memory, "_applied", None)
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=65536")
    assert memory.tune_worker_malloc() == expected


def test_nothing_happens_without_glibcs_mallopt(fresh, monkeypatch):
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")
    monkeypatch.delattr(FakeLibc, "mallopt")  # macOS: CDLL(None) has no mallopt
    assert memory.tune_worker_malloc() == {}
    assert memory.applied_malloc_settings() == {}

    monkeypatch.setattr(memory, "_applied", None)
    monkeypatch.setattr(FakeLibc, "mallopt", lambda self, parameter, value: 1, raising=False)
    monkeypatch.delattr(FakeLibc, "gnu_get_libc_version")  # musl has a mallopt that does nothing
    assert memory.tune_worker_malloc() == {}

    def no_libc(name):
        raise TypeError("Windows: no C library by the name None")

    monkeypatch.setattr(memory, "_applied", None)
    monkeypatch.setattr(memory.ctypes, "CDLL", no_libc)
    assert memory.tune_worker_malloc() == {}


def test_a_refused_setting_is_not_reported(fresh, monkeypatch):
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")
    monkeypatch.setattr(FakeLibc, "mallopt", lambda self, parameter, value: int(parameter.value != -3))
    assert memory.tune_worker_malloc() == {"M_TRIM_THRESHOLD": 64 * MiB}
