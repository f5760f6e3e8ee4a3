"""Read the coordinates reported by the studies of a CNM analysis.

Three input formats are detected from the file:

* a table (``.tsv``, ``.txt``; ``.csv`` for comma-separated) whose header names
  the columns ``study``, ``x``, ``y`` and ``z``;
* a Sleuth / GingerALE text file (``// Reference=MNI`` then, per experiment,
  ``// Author, Year: contrast`` and ``// Subjects=N`` lines and one ``x y z``
  line per focus), parsed by :func:`nimare.io.convert_sleuth_to_dataset`;
* a NiMARE dataset JSON (``.json``), parsed by :class:`nimare.dataset.Dataset`.

Whatever the format, the result is one table with one row per coordinate, in
MNI millimetres, whose columns are described in :func:`read_coordinates`.
NiMARE is imported only when a file needs it, because importing it takes seconds.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import json
import os
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from bids_cnm.config import RANDOM_SET
from bids_cnm.errors import (
    InputDataError,
    MissingInputError,
    ReadError,
    found_columns,
    where,
)

__all__ = [
    "COORDINATE_COLUMNS",
    "OUTPUT_COLUMNS",
    "BRAIN_BOX",
    "read_coordinates",
    "validate_coordinates",
    "check_reserved_sets",
    "summarize",
]

COORDINATE_COLUMNS = ("study", "x", "y", "z")
"""Columns every coordinate table must have."""

OUTPUT_COLUMNS = ("study", "x", "y", "z", "set", "space", "subtype", "modality", "source_row")
"""Leading columns of the table returned by :func:`read_coordinates`."""

# Column names we interpret; matched case-insensitively.  Any other column is metadata.
_KNOWN_COLUMNS = frozenset(OUTPUT_COLUMNS)

# Accepted spellings of the stereotactic space, mapped to the normalized name.
_SPACE_ALIASES = {
    "mni": "MNI",
    "mni152": "MNI",
    "icbm": "MNI",
    "tal": "TAL",
    "talairach": "TAL",
}
_ACCEPTED_SPACES = "MNI, MNI152, ICBM, TAL or Talairach"

BRAIN_BOX = {"x": (-100.0, 100.0), "y": (-130.0, 100.0), "z": (-80.0, 100.0)}
"""Generous MNI bounds (mm); a coordinate outside them is almost surely a typo."""

# What a Sleuth file must look like, repeated in every Sleuth error message.
_SLEUTH_FIX = (
    "a Sleuth file starts with '// Reference=MNI' or '// Reference=Talairach'; each "
    "experiment has a unique '// Author, Year: contrast' line, a '// Subjects=N' line, "
    "then one 'x y z' line per focus"
)
_SLEUTH_MARKER = re.compile(r"^\s*//\s*(reference|subjects)\s*=", re.IGNORECASE | re.MULTILINE)

# Locates a problem for an error message: (0-based row position, column) -> text.
Locator = Callable[[int, str | None], str]


def read_coordinates(path: str | os.PathLike, default_set: str = "primary") -> pd.DataFrame:
    """Read a coordinate file (table, Sleuth text or NiMARE JSON) into MNI coordinates.

    Parameters
    ----------
    path : str or path-like
        The coordinate file.  ``.json`` (or ``.json.gz``) is read as a NiMARE
        dataset; a text file with Sleuth markers (``// Reference=``,
        ``// Subjects=``) as Sleuth; anything else as a table, tab-separated
        unless the name ends in ``.csv``.
    default_set : str, optional
        Set label for coordinates whose ``set`` is absent or empty.

    Returns
    -------
    pandas.DataFrame
        One row per coordinate with a RangeIndex and the columns ``study``,
        ``x``, ``y``, ``z`` (float64, MNI mm), ``set``, ``space`` (the
        original space, 'MNI' or 'TAL'), ``subtype``, ``modality`` ('' when
        absent), ``source_row`` (1-based line in a table file; running 1-based
        focus number for Sleuth and JSON), then every other input column.

        In a Sleuth file each experiment is one study: ``study`` is NiMARE's
        experiment id (``<study_id>-<contrast_id>``); ``study_id``,
        ``contrast_id`` and ``sample_size`` are kept as metadata.  In a NiMARE
        JSON ``study`` is NiMARE's ``study_id``; ``id``, ``contrast_id`` and
        any extra coordinate fields are kept as metadata.

    Raises
    ------
    MissingInputError
        The file does not exist.
    ReadError
        The file cannot be read or is not UTF-8 text.
    InputDataError
        The content is wrong; the message names the file, row and column.
    """
    default_set = _check_default_set(default_set)
    path = Path(path)
    if not path.exists():
        raise MissingInputError(
            f"{where(path)}: coordinate file not found; check the path and that the "
            "folder holding it is mounted in the container"
        )
    if path.is_dir():
        raise ReadError(f"{where(path)}: is a folder; give the coordinate file itself")

    text = _read_text(path)
    if not text.strip():
        raise InputDataError(
            f"{where(path, 1)}: the file is empty; write a header line 'study x y z' "
            "and one line per coordinate"
        )
    name = path.name.lower()
    if name.endswith((".json", ".json.gz")):
        table = _read_nimare_json(text, path, default_set)
    elif _SLEUTH_MARKER.search(text):
        table = _read_sleuth(text, path, default_set)
    else:
        delimiter = "," if name.endswith(".csv") else "\t"
        cells, rows = _parse_table(text, path, delimiter)
        table = validate_coordinates(cells, str(path), default_set=default_set, rows=rows)
    check_reserved_sets(table, str(path))
    return table


def check_reserved_sets(table: pd.DataFrame, source: str) -> None:
    """Refuse a coordinate set whose name the app gives to sets it generates.

    The randomly relocated copies of the primary studies form the set
    ``random``; a user set of that name would be merged with them (its studies
    counted as relocations and vice versa).

    Parameters
    ----------
    table : pandas.DataFrame
        A coordinate table with a ``set`` column (and ``source_row``, used to
        point at the first offending row when present).
    source : str
        Where the table comes from, for the message.

    Raises
    ------
    InputDataError
        A row's ``set`` is a reserved name; the message names the file, row and
        the fix.
    """
    clash = np.flatnonzero(table["set"].astype(str).str.strip().to_numpy() == RANDOM_SET)
    if len(clash) == 0:
        return
    row = table["source_row"].iloc[clash[0]] if "source_row" in table.columns else None
    raise InputDataError(
        f"{where(source, None if row is None else int(row), 'set')}: the set name "
        f"'{RANDOM_SET}' is reserved for the randomly relocated copies of the primary "
        f"studies (--random-relocations); rename this set (e.g. '{RANDOM_SET}_user'), "
        "also where the analysis plan names it"
    )


def validate_coordinates(
    table: pd.DataFrame,
    source: str,
    default_set: str = "primary",
    rows: Sequence[int] | None = None,
) -> pd.DataFrame:
    """Check and normalize a coordinate table given as a DataFrame.

    Parameters
    ----------
    table : pandas.DataFrame
        Must have the columns ``study``, ``x``, ``y`` and ``z`` (names are
        case-insensitive, surrounding whitespace ignored); ``set``,
        ``space``, ``subtype`` and ``modality`` are optional.  Cells may be
        strings or numbers.
    source : str
        Where the table comes from, used in error messages.
    default_set : str, optional
        Set label for rows without a ``set`` value.
    rows : sequence of int, optional
        Line number of each row in ``source``.  By default rows are numbered
        as in a TSV written from ``table`` with a header: the first row is 2.

    Returns
    -------
    pandas.DataFrame
        The table described in :func:`read_coordinates`, TAL coordinates
        converted to MNI.  An input ``source_row`` column is replaced.

    Raises
    ------
    InputDataError
        A column is missing or a value is wrong; the message names the
        source, row and column, and says how to fix it.
    """
    default_set = _check_default_set(default_set)
    if rows is None:
        rows = range(2, len(table) + 2)
    rows = [int(row) for row in rows]
    if len(rows) != len(table):
        raise ValueError(f"rows has {len(rows)} entries but the table has {len(table)} rows")

    def locate(position: int, column: str | None) -> str:
        return where(source, rows[position], column)

    return _build(table, source, default_set, rows, locate)


def summarize(table: pd.DataFrame) -> pd.DataFrame:
    """Count the coordinates of each study of each set, for the logs.

    Parameters
    ----------
    table : pandas.DataFrame
        A table returned by :func:`read_coordinates`.

    Returns
    -------
    pandas.DataFrame
        Columns ``set``, ``study`` and ``n_coordinates``, one row per
        (set, study), sorted by set then study.
    """
    counts = table.groupby(["set", "study"], sort=True).size()
    return counts.rename("n_coordinates").reset_index()


# --------------------------------------------------------------------------- helpers


def _check_default_set(default_set: str) -> str:
    """Return the stripped default set label, refusing an empty one."""
    label = str(default_set).strip()
    if not label:
        raise ValueError("default_set must be a non-empty label")
    return label


#: the largest text input read (a coordinate table of thousands of studies is < 10 MB);
#: a device or a wrong file (``/dev/zero``, an image) must not fill the memory
MAX_TEXT_BYTES = 64 * 1024 * 1024


def _read_text(path: Path) -> str:
    """Read a UTF-8 (optionally gzipped) text file of at most :data:`MAX_TEXT_BYTES`."""
    try:
        with open(path, "rb") as raw:
            stream = gzip.GzipFile(fileobj=raw) if path.name.lower().endswith(".gz") else raw
            data = stream.read(MAX_TEXT_BYTES + 1)
    except (OSError, EOFError) as err:  # gzip raises BadGzipFile (an OSError) or EOFError
        raise ReadError(
            f"{where(path)}: cannot read the file ({type(err).__name__}: "
            f"{getattr(err, 'strerror', None) or 'corrupt or truncated'}); check its "
            "permissions and that it is not truncated"
        ) from None
    if len(data) > MAX_TEXT_BYTES:
        raise InputDataError(
            f"{where(path)}: larger than {MAX_TEXT_BYTES // 2**20} MB, too large for a "
            "coordinate table; give the table itself (study, x, y, z)"
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        # wrong content, not a failed read: bad data (65)
        raise InputDataError(
            f"{where(path, line)}: byte 0x{data[err.start]:02x} is not UTF-8 text; "
            "save the file as UTF-8 (plain text, not a spreadsheet)"
        ) from None


def _parse_table(text: str, path: Path, delimiter: str) -> tuple[pd.DataFrame, list[int]]:
    """Split table text into string cells, remembering each record's line number.

    The csv module is used instead of pandas because it reports line numbers
    that survive blank lines and quoted multi-line cells.
    """
    separator = "comma" if delimiter == "," else "tab"
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header: list[str] | None = None
    records: list[list[str]] = []
    lines: list[int] = []
    last_line = 0
    try:
        for fields in reader:
            line, last_line = last_line + 1, reader.line_num
            if not any(field.strip() for field in fields):
                continue  # blank line
            if header is None:
                header, header_line = [field.strip() for field in fields], line
                _check_header(header, path, line, delimiter)
                continue
            if reader.line_num > line:
                # a quote left open swallows the line breaks up to the next quote: TSV has
                # no quoting, and a study name never spans lines
                raise InputDataError(
                    f"{where(path, line)}: a quote (\") opened on this line is closed only on "
                    f"line {reader.line_num}, which merges the rows between; remove the "
                    "stray quote"
                )
            if len(fields) > len(header):
                raise InputDataError(
                    f"{where(path, line)}: {len(fields)} {separator}-separated fields but "
                    f"the header has {len(header)}; remove the extra {separator}s"
                )
            records.append(fields + [""] * (len(header) - len(fields)))
            lines.append(line)
    except csv.Error as err:
        raise ReadError(
            f"{where(path, reader.line_num)}: cannot split the line into cells ({err}); "
            "is this a plain-text table?"
        ) from err
    assert header is not None  # the caller refused whitespace-only text
    if not records:
        raise InputDataError(
            f"{where(path, header_line)}: only a header, no coordinate rows; add one line "
            "per coordinate with its study, x, y and z"
        )
    table = pd.DataFrame(records, columns=header, dtype=object)
    return _drop_unnamed_empty_columns(table, path, lines), lines


def _check_header(header: list[str], path: Path, line: int, delimiter: str) -> None:
    """Check the header line; a wrong separator shows up as one long column name."""
    if len(header) == 1:
        expected = "comma" if delimiter == "," else "tab"
        for other, name in (("\t", "tab"), (",", "comma"), (";", "semicolon")):
            if other != delimiter and other in header[0]:
                fix = "rename it to .csv" if other == "," else f"separate columns by {expected}s"
                raise InputDataError(
                    f"{where(path, line, header[0])}: the header is one column; the file looks "
                    f"{name}-separated but its name says {expected}-separated; {fix}"
                )
        if len(header[0].split()) > 1:
            raise InputDataError(
                f"{where(path, line, header[0])}: the header is one column; separate the "
                "columns by tabs, not spaces (or write a Sleuth file, '// Reference=MNI' first)"
            )
    # Checked here too (validate_coordinates repeats it) to name the header line.
    names = {name.lower() for name in header}
    missing = [column for column in COORDINATE_COLUMNS if column not in names]
    if missing:
        raise InputDataError(
            f"{where(path, line, missing[0])}: missing column(s) {', '.join(missing)}; "
            f"found {found_columns(header)}; the first line must be a header naming "
            "the columns study, x, y and z"
        )


def _drop_unnamed_empty_columns(
    table: pd.DataFrame, path: Path, lines: list[int]
) -> pd.DataFrame:
    """Drop columns without a name and without values (trailing separators)."""
    keep = []
    for number, name in enumerate(table.columns, start=1):
        if name:
            keep.append(number - 1)
            continue
        values = table.iloc[:, number - 1].str.strip()
        filled = values != ""
        if filled.any():
            row = lines[int(np.argmax(filled.to_numpy()))]
            raise InputDataError(
                f"{where(path, row)}: column number {number} has values but no name in "
                "the header; name it in the header line or delete it"
            )
    return table.iloc[:, keep]


def _build(
    table: pd.DataFrame, source: str, default_set: str, rows: list[int], locate: Locator
) -> pd.DataFrame:
    """Validate ``table`` and return the output table with ``source_row`` = ``rows``."""
    result = _normalize(table, source, default_set, locate)
    result.insert(OUTPUT_COLUMNS.index("source_row"), "source_row", np.asarray(rows, dtype=int))
    return result


def _normalize(
    table: pd.DataFrame, source: str, default_set: str, locate: Locator
) -> pd.DataFrame:
    """Validate a table and build the output columns (without ``source_row``)."""
    table = _canonical_columns(table, source)
    missing = [column for column in COORDINATE_COLUMNS if column not in table.columns]
    if missing:
        raise InputDataError(
            f"{where(source)}: missing column(s) {', '.join(missing)}; found "
            f"{found_columns(table.columns)}; the header line must "
            "name the columns study, x, y and z"
        )
    if table.empty:
        raise InputDataError(
            f"{where(source)}: no coordinate rows; add one row per coordinate "
            "with its study, x, y and z"
        )

    study = _text(table["study"])
    empty = [i for i, value in enumerate(study) if not value]
    if empty:
        raise InputDataError(
            f"{locate(empty[0], 'study')}: the study is empty; write the study name "
            "(all coordinates of one study share it)"
        )
    xyz = np.column_stack([_numbers(table[axis], axis, locate) for axis in "xyz"])

    space = _spaces(table, locate)
    is_tal = space == "TAL"
    if is_tal.any():
        xyz[is_tal] = _tal_to_mni(xyz[is_tal])
    _check_brain_box(xyz, table, locate)

    result = pd.DataFrame(
        {
            "study": study,
            "x": xyz[:, 0],
            "y": xyz[:, 1],
            "z": xyz[:, 2],
            "set": [value or default_set for value in _optional_text(table, "set")],
            "space": space,
            "subtype": _optional_text(table, "subtype"),
            "modality": _optional_text(table, "modality"),
        }
    )
    for column in (c for c in table.columns if c not in _KNOWN_COLUMNS):
        result[column] = table[column].to_numpy()
    return result


def _canonical_columns(table: pd.DataFrame, source: str) -> pd.DataFrame:
    """Strip column names and lower-case the ones we interpret; refuse duplicates."""
    names = []
    for column in table.columns:
        name = str(column).strip()
        names.append(name.lower() if name.lower() in _KNOWN_COLUMNS else name)
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise InputDataError(
            f"{where(source, column=duplicated[0])}: the column appears more than once "
            "(names are case-insensitive); keep one"
        )
    table = table.copy()
    table.columns = names
    return table.reset_index(drop=True)


def _text(values: pd.Series) -> list[str]:
    """Cells as stripped strings; a missing cell (NaN, None) is ''."""
    return ["" if _is_missing(value) else str(value).strip() for value in values]


def _optional_text(table: pd.DataFrame, column: str) -> list[str]:
    """An optional text column, '' everywhere when the table lacks it."""
    return _text(table[column]) if column in table.columns else [""] * len(table)


def _is_missing(value: object) -> bool:
    """True for None, NaN and pandas NA, which pandas uses for empty cells."""
    return value is None or (pd.api.types.is_scalar(value) and bool(pd.isna(value)))


def _numbers(values: pd.Series, axis: str, locate: Locator) -> np.ndarray:
    """Parse one coordinate column to float64, naming the first bad cell."""
    cleaned = pd.Series([v.strip() if isinstance(v, str) else v for v in values], dtype=object)
    numbers = pd.to_numeric(cleaned, errors="coerce").to_numpy(dtype=float)
    bad = ~np.isfinite(numbers)  # also refuses 'nan' and 'inf' written in the file
    if bad.any():
        position = int(np.argmax(bad))
        raw = cleaned.iloc[position]
        if _is_missing(raw) or raw == "":
            problem = "the value is empty; every coordinate needs x, y and z"
        else:
            problem = f"'{raw}' is not a number; write millimetres such as -42 or 12.5"
            if isinstance(raw, str) and re.fullmatch(r"[-+]?\d+,\d+", raw):
                problem += " with a dot, not a comma, before the decimals"
        raise InputDataError(f"{locate(position, axis)}: {problem}")
    return numbers


def _spaces(table: pd.DataFrame, locate: Locator) -> np.ndarray:
    """Normalized space of each row ('MNI' or 'TAL'); MNI when there is no space column."""
    if "space" not in table.columns:
        return np.full(len(table), "MNI", dtype=object)
    spaces = []
    for position, value in enumerate(_text(table["space"])):
        normalized = _SPACE_ALIASES.get(value.lower())
        if normalized is None:
            # An empty cell is refused, not defaulted: guessing wrong shifts the seed ~1 cm.
            shown = f"'{value}'" if value else "empty"
            raise InputDataError(
                f"{locate(position, 'space')}: the space is {shown}; write {_ACCEPTED_SPACES}"
            )
        spaces.append(normalized)
    return np.asarray(spaces, dtype=object)


def _tal_to_mni(xyz: np.ndarray) -> np.ndarray:
    """Talairach to MNI with NiMARE's Lancaster et al. (2007) transform.

    ``tal2mni`` guesses orientation from which axis has length 3 (and assumes
    rows for a 3x3 input), so an (N, 3) array always comes back as (N, 3).
    """
    from nimare.utils import tal2mni

    return np.asarray(tal2mni(np.asarray(xyz, dtype=float)), dtype=float).reshape(xyz.shape)


def _check_brain_box(xyz: np.ndarray, table: pd.DataFrame, locate: Locator) -> None:
    """Refuse coordinates far outside any brain: a typo, not a finding."""
    for index, (axis, (low, high)) in enumerate(BRAIN_BOX.items()):
        outside = (xyz[:, index] < low) | (xyz[:, index] > high)
        if outside.any():
            position = int(np.argmax(outside))
            raw = table[axis].iloc[position]
            raw = raw.strip() if isinstance(raw, str) else raw
            raise InputDataError(
                f"{locate(position, axis)}: {axis}={raw} lies outside the brain "
                f"({low:g} to {high:g} mm in MNI), probably a typo (missing minus sign "
                "or decimal point, swapped columns); correct the value"
            )


# --------------------------------------------------------------------------- NiMARE formats


def _read_sleuth(text: str, path: Path, default_set: str) -> pd.DataFrame:
    """Read a Sleuth file with NiMARE; each experiment becomes one study."""
    from nimare.io import convert_sleuth_to_dataset

    # NiMARE opens the file itself: it cannot decompress it and would read a
    # byte-order mark as part of the space name.
    if path.name.lower().endswith(".gz"):
        raise InputDataError(f"{where(path)}: a Sleuth file cannot be gzipped; decompress it")
    if path.read_bytes().startswith(b"\xef\xbb\xbf"):
        raise InputDataError(
            f"{where(path, 1)}: the file starts with a byte-order mark; save it as UTF-8 "
            "without BOM"
        )
    try:
        with _quiet_nimare():
            # target=None keeps the file's space so we can report it and convert it ourselves.
            dataset = convert_sleuth_to_dataset(os.fspath(path), target=None)
    except OSError as err:
        raise ReadError(f"{where(path)}: NiMARE cannot read the file ({err})") from err
    except Exception as err:  # any failure inside NiMARE's parser means bad content
        raise InputDataError(_sleuth_message(text, path, f"NiMARE: {_one_line(err)}")) from err

    coordinates = _dataset_coordinates(dataset)
    # NiMARE silently merges experiments with the same name and experiments
    # without foci into the next one: compare with what the file holds.
    n_experiments, foci_lines = _sleuth_counts(text)
    if len(coordinates) != len(foci_lines) or dataset.ids.size != n_experiments:
        raise InputDataError(
            _sleuth_message(
                text,
                path,
                f"NiMARE read {dataset.ids.size} experiment(s) and {len(coordinates)} foci "
                f"but the file has {n_experiments} '// Subjects=' line(s) and "
                f"{len(foci_lines)} coordinate line(s)",
            )
        )

    sample_sizes = _sample_sizes(dataset.metadata)
    table = coordinates.assign(study=coordinates["id"])
    table["sample_size"] = table["id"].map(sample_sizes)
    table = table[["study", "x", "y", "z", "space", "study_id", "contrast_id", "sample_size"]]
    return _finish_nimare(table, path, default_set)


def _read_nimare_json(text: str, path: Path, default_set: str) -> pd.DataFrame:
    """Read a NiMARE dataset JSON; ``study`` is NiMARE's study_id."""
    from nimare.dataset import Dataset

    fix = (
        "a NiMARE dataset JSON maps each study id to {'contrasts': {contrast id: "
        "{'coords': {'space': 'MNI', 'x': [...], 'y': [...], 'z': [...]}}}}"
    )
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise InputDataError(
            f"{where(path, err.lineno)}: invalid JSON ({err.msg} at character {err.colno}); "
            "fix the syntax"
        ) from err
    try:
        with _quiet_nimare():
            dataset = Dataset(data, target=None)
    except Exception as err:  # any failure inside NiMARE's reader means bad content
        problem = _one_line(err)
        raise InputDataError(f"{where(path)}: NiMARE cannot read it ({problem}); {fix}") from err

    coordinates = _dataset_coordinates(dataset)
    if coordinates.empty:
        raise InputDataError(f"{where(path)}: the dataset has no coordinates; {fix}")
    first = ["study_id", "x", "y", "z", "space", "id", "contrast_id"]
    table = coordinates[first + [c for c in coordinates.columns if c not in first]]
    return _finish_nimare(table.rename(columns={"study_id": "study"}), path, default_set)


def _dataset_coordinates(dataset: object) -> pd.DataFrame:
    """``Dataset.coordinates`` in file order.

    The Dataset sorts coordinates by id with an unstable sort, shuffling the
    foci of an experiment; its index still holds the file order.
    """
    return dataset.coordinates.sort_index(kind="stable").reset_index(drop=True)


def _finish_nimare(table: pd.DataFrame, path: Path, default_set: str) -> pd.DataFrame:
    """Validate coordinates from NiMARE, locating problems by experiment and focus."""
    focus = table.groupby("study", sort=False).cumcount().to_numpy() + 1
    studies = table["study"].astype(str).to_numpy()

    def locate(position: int, column: str | None) -> str:
        text = f"{where(path)}, study '{studies[position]}', focus {focus[position]}"
        return text + (f", column '{column}'" if column else "")

    rows = list(range(1, len(table) + 1))  # no line numbers: a running focus number
    return _build(table, str(path), default_set, rows, locate)


def _sample_sizes(metadata: pd.DataFrame) -> dict[str, object]:
    """Sleuth ``// Subjects=N`` per experiment id (NiMARE stores ``[N]``)."""
    if "sample_sizes" not in metadata.columns:
        return {}
    sizes = {}
    for experiment, value in zip(metadata["id"], metadata["sample_sizes"]):
        if isinstance(value, (list, tuple)) and len(value) == 1:
            value = value[0]
        sizes[experiment] = value
    return sizes


def _sleuth_counts(text: str) -> tuple[int, list[int]]:
    """Number of ``// Subjects`` lines and line numbers of focus lines.

    Lines are classified as NiMARE does: after ``rstrip``, blank lines are
    skipped, the first line is the space and ``//`` starts a header line.
    """
    lines = [(n, line.rstrip()) for n, line in enumerate(text.splitlines(), 1) if line.rstrip()]
    headers = [line for _, line in lines[1:] if line.startswith("//")]
    foci = [n for n, line in lines[1:] if not line.startswith("//")]
    return sum("Subjects" in line for line in headers), foci


def _sleuth_message(text: str, path: Path, problem: str) -> str:
    """Error message for a Sleuth file, pointing at the first suspicious line if any."""
    found = _find_sleuth_problem(text)
    if found is None:
        return f"{where(path)}: not a valid Sleuth file: {problem}; {_SLEUTH_FIX}"
    row, column, detail = found
    return f"{where(path, row, column)}: {detail} ({problem}); {_SLEUTH_FIX}"


def _find_sleuth_problem(text: str) -> tuple[int, str | None, str] | None:
    """First line NiMARE will reject or misread, as (line, column, what is wrong).

    This does not parse the file (NiMARE does); it only locates the problems
    NiMARE reports without a line number, or does not report at all.
    """
    lines = [(n, line.rstrip()) for n, line in enumerate(text.splitlines(), 1) if line.rstrip()]
    first_number, first = lines[0]
    if first.replace(" ", "").replace("//Reference=", "") not in ("MNI", "TAL", "Talairach"):
        return first_number, None, f"the first line '{first}' is not a valid space line"
    seen: dict[str, int] = {}  # experiment header text -> its line
    header: list[str] = []  # header lines of the current experiment
    previous, previous_number = "start", first_number  # kind of the previous line
    header_number = first_number  # first line of the current experiment header
    for number, line in lines[1:]:
        if line.startswith("//"):
            if previous == "subjects":
                return previous_number, None, "this experiment has no coordinate line"
            if previous != "header":
                header, header_number = [], number
            header.append(line[2:].strip())
            previous, previous_number = ("subjects" if "Subjects" in line else "header"), number
            if previous == "subjects":
                name = " ".join(header[:-1])
                if name in seen:
                    return header_number, None, (
                        f"experiment '{name}' already appears at row {seen[name]}; NiMARE "
                        "keeps only the last one"
                    )
                seen[name] = header_number
                try:
                    int(line.replace(" ", "").replace("//Subjects=", ""))
                except ValueError:
                    return number, None, "the number of subjects is not an integer"
            continue
        if previous == "start":
            return number, None, "coordinates before the first experiment header"
        if previous == "header":
            return previous_number, None, "the experiment header does not end with '// Subjects=N'"
        previous, previous_number = "coordinates", number
        fields = line.split()
        if len(fields) != 3:
            return number, None, f"'{line}' has {len(fields)} values instead of x y z"
        for axis, field in zip("xyz", fields):
            try:
                float(field)
            except ValueError:
                return number, axis, f"'{field}' is not a number"
    if previous == "subjects":
        return previous_number, None, "this experiment has no coordinate line"
    return None


@contextlib.contextmanager
def _quiet_nimare() -> Iterator[None]:
    """Silence the warnings NiMARE raises on every call we make on purpose."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # Dataset is deprecated in NiMARE 0.22
        # target=None is on purpose: we convert TAL ourselves to keep the original space.
        warnings.filterwarnings("ignore", "No mask or target space", UserWarning)
        yield


def _one_line(err: BaseException) -> str:
    """An exception as one line (NiMARE messages may hold a whole table)."""
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}" if text else type(err).__name__
