"""Options from a file (``--config-file``), the run's own options file, BIDS filters.

A run writes every option it used to ``<output_dir>/logs/bids_cnm.toml``;
``bids_cnm BIDS_DIR OUTPUT_DIR LEVEL --config-file that.toml`` repeats it.  Options
given on the command line win over the file's.  Keys are the long option names
with or without dashes (``t-threshold``, ``t_threshold``).
"""

from __future__ import annotations

import argparse
import difflib
import json
from collections.abc import Mapping
from pathlib import Path

from bids_cnm.errors import InputDataError, MissingInputError, UsageError

try:
    import tomllib
except ImportError:  # Python 3.10: JSON configuration files only
    tomllib = None

#: options that describe this invocation, not the analysis: never read from or written to
#: a configuration file
_NOT_IN_FILE = frozenset({"help", "version", "config_file", "boilerplate_only",
                          "bids_dir", "output_dir", "analysis_level"})


def _read_mapping(path: Path, flag: str) -> dict:
    """A TOML or JSON file holding a mapping (TOML when the suffix is ``.toml``)."""
    if not path.is_file():
        raise MissingInputError(f"{flag} {path} does not exist.")
    if path.suffix == ".toml" and tomllib is None:
        raise UsageError(f"{flag} {path}: TOML needs Python >= 3.11; give a JSON file.")
    try:
        text = path.read_text()
        loaded = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (ValueError, OSError) as exc:  # TOMLDecodeError and JSONDecodeError are ValueErrors
        kind = "TOML" if path.suffix == ".toml" else "JSON"
        raise InputDataError(f"{path}: not valid {kind} ({exc}).") from exc
    if not isinstance(loaded, dict):
        raise InputDataError(f"{path}: must hold a mapping of option names to values.")
    return loaded


def file_defaults(parser: argparse.ArgumentParser, path: Path) -> dict:
    """Parser defaults from a configuration file, converted as the command line would.

    Parameters
    ----------
    parser : ArgumentParser
    path : Path
        TOML (``.toml``) or JSON file; a ``[bids_cnm]`` table is read when present.

    Returns
    -------
    dict
        ``dest -> value`` for :meth:`argparse.ArgumentParser.set_defaults`.

    Raises
    ------
    UsageError
        An unknown option (with the closest known name) or a bad value.
    """
    content = _read_mapping(path, "--config-file")
    content = content.get("bids_cnm", content)
    actions = {a.dest: a for a in parser._actions if a.dest not in _NOT_IN_FILE}
    names = {}
    for action in actions.values():
        names[action.dest] = action.dest
        for option in action.option_strings:
            names[option.lstrip("-").replace("-", "_")] = action.dest
    out = {}
    for key, value in content.items():
        dest = names.get(str(key).replace("-", "_"))
        if dest is None:
            close = difflib.get_close_matches(str(key).replace("-", "_"), list(names), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise UsageError(f"--config-file {path}: unknown option '{key}'{hint}")
        out[dest] = _convert(actions[dest], value, path, key)
    return out


def _convert(action: argparse.Action, value: object, path: Path, key: str) -> object:
    """A file value as the action's ``type`` makes it from the command line."""
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise UsageError(f"--config-file {path}: '{key}' must be true or false.")
        return value
    if isinstance(action, argparse._CountAction):
        return int(value)
    convert = action.type or (lambda v: v)
    try:
        if action.nargs in ("+", "*"):
            values = value if isinstance(value, list) else [value]
            return [convert(str(v)) for v in values]
        return convert(str(value)) if value is not None else None
    except (argparse.ArgumentTypeError, ValueError) as exc:
        raise UsageError(f"--config-file {path}: '{key}': {exc}") from exc


def _toml_value(value: object) -> str:
    """TOML literal of a scalar or a list of scalars (JSON's string escapes are TOML's)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def options_toml(options: Mapping[str, object]) -> str:
    """The text of a ``--config-file`` holding ``options`` (``None`` values left out)."""
    lines = ["# bids_cnm options of this run; repeat it with", "#   bids_cnm BIDS_DIR "
             "OUTPUT_DIR LEVEL --config-file bids_cnm.toml", "[bids_cnm]"]
    for key, value in options.items():
        if value is None or key in _NOT_IN_FILE:
            continue
        if isinstance(value, (list, tuple)) and value and isinstance(value[0], tuple):
            value = [f"{a}={b}" for a, b in value]  # COLUMN=VALUE filters
        lines.append(f"{key.replace('_', '-')} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def load_bids_filters(path: Path) -> dict:
    """A ``--bids-filter-file``: pybids entity filters of the BOLD query (NiPreps format).

    ``{"bold": {"session": "1", "acquisition": "mb"}}``: the ``bold`` key's entities
    are added to the query of the connectome's BOLD runs and brain masks.
    """
    content = _read_mapping(path, "--bids-filter-file")
    unknown = set(content) - {"bold"}
    if unknown:
        raise InputDataError(
            f"{path}: unknown query {sorted(unknown)}; bids_cnm reads the 'bold' query only, "
            "e.g. {\"bold\": {\"session\": \"1\"}}.")
    bold = content.get("bold", {})
    if not isinstance(bold, dict):
        raise InputDataError(f"{path}: 'bold' must map pybids entities to values.")
    reserved = {"suffix", "extension", "subject"} & set(bold)
    if reserved:
        raise InputDataError(f"{path}: 'bold' may not set {sorted(reserved)} (use "
                             "--participant-label for subjects).")
    return {"bold": bold}
