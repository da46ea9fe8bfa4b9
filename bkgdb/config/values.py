"""Checks of single config values: numbers, mappings, lists and paths, each refused with a one-line message.

Every message names the value's place in the file (``section.key``) so the user can find it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from bkgdb.errors import ConfigError

__all__ = ["ConfigWarning", "MAX_CONFIG_INT", "content_hash", "file_digest"]

#: Whole numbers in a config are bounded: a value beyond this is a typo, and SQL integers stop here.
MAX_CONFIG_INT = 2**31 - 1


class ConfigWarning(UserWarning):
    """A configuration key bkgdb does not know (a typo?), or a default it cannot fill."""


def content_hash(params: Any) -> str:
    """SHA-256 of parameters as sorted JSON: settings with equal parameters share their pieces."""
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file's content."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def shown(value: Any, limit: int = 60) -> str:
    """A config value as shown in an error message: its repr, on one line and shortened."""
    try:
        text = repr(value)
    except ValueError:  # an integer too long to print
        return "a number too large to show"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def number(
    section: str,
    key: str,
    value: Any,
    kind: type = float,
    minimum: float | None = None,
    strictly: bool = False,
    maximum: float | None = None,
) -> Any:
    """A finite number from a config value, with optional bounds; a `ConfigError` naming the key otherwise.

    Non-finite values (``.inf``, ``.nan``, ``1e999``) and whole numbers beyond `MAX_CONFIG_INT`
    are refused for every key, so junk never reaches a binning, a radius or an SQL parameter.
    """
    label = f"{section}.{key}"
    try:
        if isinstance(value, bool):
            raise ValueError
        if isinstance(value, int) and abs(value) > MAX_CONFIG_INT:
            raise ConfigError(f"{label} must be at most {MAX_CONFIG_INT} in size, got {shown(value)}")
        result: float | int = float(value.strip() if isinstance(value, str) else value)
        if not np.isfinite(result):
            raise ConfigError(f"{label} must be a finite number, got {shown(value)}")
        if kind is int:
            if not float(result).is_integer():
                raise ValueError
            result = int(result) if not isinstance(value, int) else value
            if abs(result) > MAX_CONFIG_INT:
                raise ConfigError(f"{label} must be at most {MAX_CONFIG_INT} in size, got {shown(value)}")
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{label} must be a {'whole ' if kind is int else ''}number, got {shown(value)}") from None
    if minimum is not None and (result < minimum or (strictly and result == minimum)):
        raise ConfigError(f"{label} must be {'>' if strictly else '>='} {minimum}, got {shown(value)}")
    if maximum is not None and result > maximum:
        raise ConfigError(f"{label} must be <= {maximum}, got {shown(value)}")
    return result


def optional(
    section: str, values: dict, key: str, kind: type = float, minimum: float | None = None, strictly: bool = False
) -> Any:
    """`number` of ``values[key]``, or None when the key is missing or null."""
    return None if values.get(key) is None else number(section, key, values[key], kind, minimum, strictly)


def mapping(section: str, values: Any) -> dict:
    """A config section as a dict: None is empty, anything but a mapping is an error."""
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"{section} must be a mapping of keys to values, got {type(values).__name__} {shown(values)}")
    return dict(values)


def sequence(section: str, key: str, value: Any) -> list:
    """A config list: None is empty, a single mapping or scalar is an error."""
    if value is None:
        return []
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{section}.{key} must be a list, got {type(value).__name__} {shown(value)}")
    return list(value)


def flag(section: str, key: str, value: Any) -> bool:
    """A config switch: YAML true or false only (``"yes"`` as text or 1 would hide a typo)."""
    if not isinstance(value, bool):
        raise ConfigError(f"{section}.{key} must be true or false, got {value!r}")
    return value


def check_keys(section: str, values: dict, known: Iterable[str]) -> None:
    """Warn about every key of a section that bkgdb does not know (a typo?)."""
    known = set(known)
    for key in values:
        if key not in known:
            warnings.warn(f"unknown key {section}.{key} in config (ignored)", ConfigWarning, stacklevel=3)


def config_path(value: Any, resolve: bool = False) -> str:
    """A configured path with ``$VARIABLES`` and ``~`` expanded."""
    path = Path(os.path.expandvars(str(value))).expanduser()
    try:
        return str(path.resolve() if resolve else path)
    except (OSError, RuntimeError, ValueError) as exc:  # NUL bytes, symlink loops
        raise ConfigError(f"unusable path {shown(str(value))}: {exc}") from None


def is_file(path: str | os.PathLike) -> bool:
    """Whether a file exists; a path the OS cannot even look up (too long, NUL byte) does not."""
    try:
        return Path(path).is_file()
    except (OSError, ValueError):
        return False


def is_folder(path: str | os.PathLike) -> bool:
    """Whether a folder exists; a path the OS cannot even look up (too long, NUL byte) is not one."""
    try:
        return Path(path).is_dir()
    except (OSError, ValueError):
        return False


def missing_file_message(label: str, what: str, path: str | os.PathLike) -> str:
    """Why a configured file is missing, telling the user to set an unset variable the path names."""
    unset = sorted({name for name in re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", str(path)) if name not in os.environ})
    if unset:
        variables = ", ".join(unset)
        hint = (
            "set GAMMAPY_DATA to gammapy's data folder (the one holding catalogs/)"
            if unset == ["GAMMAPY_DATA"]
            else f"set {variables}"
        )
        return f"{label}: {what} {path} not found because {variables} is not set: {hint}, or give an explicit path" + (
            ", or none to use no such catalogue" if what == "catalogue file" else ""
        )
    return f"{label}: {what} not found: {path}"
