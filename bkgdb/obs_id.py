"""What an OBS_ID may be: an integer in 0 ... 2**63 - 1.

The catalogue stores OBS_IDs as 64-bit signed integers and indexes no run outside that range
(`bkgdb.gadf.datastore.checked_obs_ids`); an OBS_ID beyond it, given to find a run, names none,
and SQLite's driver cannot even bind it (an ``OverflowError``).
"""

from __future__ import annotations

from bkgdb.errors import BkgdbError

__all__ = ["OBS_ID_LIMIT", "check_obs_id"]

#: One more than the largest OBS_ID: the first that a 64-bit signed integer cannot hold.
OBS_ID_LIMIT = 2**63


def check_obs_id(obs_id: int) -> None:
    """Raise a `~bkgdb.errors.BkgdbError` unless ``obs_id`` is in 0 ... 2**63 - 1.

    Parameters
    ----------
    obs_id : int
        The OBS_ID of a run to look up (a Python or NumPy integer).
    """
    if not 0 <= obs_id < OBS_ID_LIMIT:
        raise BkgdbError(f"OBS_ID {obs_id} names no run: OBS_IDs are integers in 0 ... 2**63 - 1 (64-bit signed)")
