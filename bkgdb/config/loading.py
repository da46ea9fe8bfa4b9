"""Reading a config file: safe YAML, a key given twice refused, every error on one line with its place."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from bkgdb.config.core import BkgdbConfig
from bkgdb.config.values import ConfigError, is_file, is_folder, shown

__all__ = ["load_config"]


def _yaml_loader() -> type:
    """A safe YAML loader that refuses a key given twice in one mapping (the last would win silently)."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> dict:
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node)
                except TypeError:
                    continue  # an unhashable key: the base class reports it
                if first is not key_node:
                    raise yaml.constructor.ConstructorError(
                        None,
                        None,
                        f"duplicate key {shown(key)} (first given on line {first.start_mark.line + 1})",
                        key_node.start_mark,
                    )
            return super().construct_mapping(node, deep)

    return UniqueKeyLoader


def _yaml_error_message(path: Path, exc: Exception) -> str:
    """One line: file, line and column, and what is wrong."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context = getattr(exc, "context", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
    text = f"{context}: {problem}" if context and problem else problem
    return f"{where}: not valid YAML: {' '.join(str(text).split())}"


def load_config(path: str | os.PathLike) -> BkgdbConfig:
    """Read a YAML config file.

    Parameters
    ----------
    path : str or `~pathlib.Path`
        The file.

    Returns
    -------
    config : `BkgdbConfig`

    Raises
    ------
    ConfigError
        The file is missing, empty, not YAML (with line and column), has a key twice, or holds an
        invalid value; always one line.
    """
    import yaml

    path = Path(path).expanduser()
    if not is_file(path):
        if is_folder(path):
            raise ConfigError(f"{path} is a folder: give the config's YAML file (e.g. configs/default.yaml)")
        raise ConfigError(f"config file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    try:
        values = yaml.load(text, Loader=_yaml_loader())
    except yaml.YAMLError as exc:
        raise ConfigError(_yaml_error_message(path, exc)) from None
    except (ValueError, OverflowError, RecursionError) as exc:  # e.g. an integer of 5000 digits
        raise ConfigError(f"{path}: invalid YAML value: {shown(str(exc), 120)}") from None
    if values is None:
        raise ConfigError(f"{path} is empty: a config needs at least one section (binning, exclusion, ...)")
    if not isinstance(values, dict):
        raise ConfigError(
            f"{path} must hold a mapping of sections (binning, exclusion, ...), got a {type(values).__name__}"
        )
    return BkgdbConfig.from_dict(values)
