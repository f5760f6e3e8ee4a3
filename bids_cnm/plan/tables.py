"""Readers of the tables a plan points at: coordinate, mask, atlas-label and DBS tables.

Every reader checks the columns and values it needs and raises
:class:`~bids_cnm.errors.InputDataError` (or :class:`~bids_cnm.errors.MissingInputError`
for a file named in a table) with the plan key, the table's row and column, and the fix.
:func:`bids_cnm.plan.load.load_plan` calls them once so a bad table stops the run before
any connectivity is computed; the analyses call them again to use the tables.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from bids_cnm.errors import (
    InputDataError,
    MissingInputError,
    ReadError,
    found_columns,
    where,
)
from bids_cnm.plan.schema import (
    CONTACT_COLUMNS,
    DBS,
    VAT_COLUMNS,
    Atlas,
    Masks,
    Spheres,
)

__all__ = ["read_table", "coordinate_table", "check_column", "sphere_labels",
           "mask_roi_files", "atlas_labels", "DBSPatient", "read_dbs_table"]

_NA_VALUES = ["", "n/a", "N/A", "NA", "nan", "NaN"]

def read_table(path: Path, key: str, label: str = "analysis plan",
               columns: tuple[str, ...] = ()) -> pd.DataFrame:
    """Read a TSV (CSV when the name ends in ``.csv``) as text, checking its columns.

    Parameters
    ----------
    path : Path
        The table.
    key : str
        Plan key that names the table (for messages).
    label : str
        Plan name for messages (``Plan.label``).
    columns : tuple of str
        Required columns.

    Returns
    -------
    DataFrame
        Every value as text; missing values (``n/a``, empty) are NaN.
    """
    sep = "," if str(path).lower().endswith(".csv") else "\t"
    try:
        table = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False,
                            na_values=_NA_VALUES)
    except FileNotFoundError as exc:
        raise MissingInputError(f"{label}, {key}: file not found: {path}; check the path") \
            from exc
    except pd.errors.EmptyDataError as exc:
        raise InputDataError(
            f"{label}, {key} ({path}): the table is empty; write a header line and one "
            "row per entry") from exc
    except (pd.errors.ParserError, UnicodeDecodeError, OSError) as exc:
        raise ReadError(f"{label}, {key} ({path}): cannot be read as a "
                        f"{'CSV' if sep == ',' else 'TSV'} table ({exc})") from exc
    table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise InputDataError(
            f"{label}, {key} ({where(path, 1)}): missing column(s) {missing}; the table "
            f"needs {', '.join(columns)} (columns found: {found_columns(table.columns)}; "
            f"{'comma' if sep == ',' else 'tab'}-separated)"
        )
    if len(table) == 0:
        raise InputDataError(f"{label}, {key} ({path}): the table has no rows; add rows")
    return table


def coordinate_table(path: Path, key: str, label: str = "analysis plan",
                     columns: tuple[str, ...] = ("x", "y", "z"),
                     numeric: tuple[str, ...] = ("x", "y", "z")) -> pd.DataFrame:
    """Read a table with numeric columns (e.g. ``x, y, z`` in MNI mm).

    Returns
    -------
    DataFrame
        The ``numeric`` columns as float64, the others as text.
    """
    table = read_table(path, key, label, columns)
    for column in numeric:
        values = pd.to_numeric(table[column], errors="coerce").to_numpy(dtype=float)
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            raw = table[column].iloc[bad[0]]
            raise InputDataError(
                f"{label}, {key} ({where(path, int(bad[0]) + 2, column)}): "
                f"{'an empty value' if pd.isna(raw) else repr(raw)} is not a number; "
                "give a number" + (" (MNI mm)" if column in ("x", "y", "z") else "")
            )
        table[column] = values
    return table


def check_column(table: pd.DataFrame, column: str, path: Path, key: str, label: str) -> None:
    """Raise an :class:`InputDataError` naming ``key`` when ``table`` lacks ``column``."""
    if column not in table.columns:
        raise InputDataError(
            f"{label}, {key}: column '{column}' is not in {path} (columns: "
            f"{found_columns(table.columns)}); name one of them"
        )


def sphere_labels(spec: Spheres, table: pd.DataFrame) -> list[str]:
    """ROI names of a sphere table: ``label_column``, else ``name``/``label``, else ``roi<n>``."""
    column = spec.label_column or next(
        (c for c in ("name", "label") if c in table.columns), None
    )
    if column is None:
        return [f"roi{i + 1}" for i in range(len(table))]
    return [str(v) if not pd.isna(v) else f"roi{i + 1}" for i, v in enumerate(table[column])]


def mask_roi_files(spec: Masks, key: str, label: str = "analysis plan"
                   ) -> tuple[list[Path], pd.DataFrame]:
    """The mask files of a ``masks`` entry and their table.

    With a ``table``, its ``file_column`` lists the files (relative to ``folder`` when
    given, else to the table's folder); without it, ``files`` or every ``.nii``/
    ``.nii.gz`` of ``folder`` (sorted by name).

    Returns
    -------
    files : list of Path
    table : DataFrame
        One row per file: ``roi`` (the file name without extension) and the table's
        columns.
    """
    if spec.table is not None:
        table = read_table(spec.table, f"{key}.table", label, (spec.file_column,))
        root = spec.folder or spec.table.parent
        files = []
        for i, value in enumerate(table[spec.file_column]):
            if pd.isna(value):
                raise InputDataError(
                    f"{label}, {key}.table ({where(spec.table, i + 2, spec.file_column)}): "
                    "empty file name; give the mask file of every row")
            path = Path(str(value).strip()).expanduser()
            path = path if path.is_absolute() else root / path
            if not path.is_file():
                raise MissingInputError(
                    f"{label}, {key}.table ({where(spec.table, i + 2, spec.file_column)}): "
                    f"mask file not found: {path}; paths in the table are relative to "
                    f"{'the folder' if spec.folder else 'the table'} {root}")
            files.append(path)
        table = table.copy()
    else:
        if spec.files is not None:
            files = list(spec.files)
        elif spec.folder is not None:
            files = sorted(p for p in spec.folder.iterdir()
                           if p.is_file() and p.name.endswith((".nii", ".nii.gz")))
            if not files:
                raise MissingInputError(
                    f"{label}, {key}.folder: no .nii or .nii.gz file in {spec.folder}; "
                    "put the mask images there or list them under 'files'")
        else:
            raise InputDataError(f"{label}, {key}: no masks given; give folder, files or table")
        table = pd.DataFrame(index=range(len(files)))
    names = [re.sub(r"\.nii(\.gz)?$", "", p.name) for p in files]
    table.insert(0, "roi", names)
    return files, table


def atlas_labels(spec: Atlas, key: str, label: str = "analysis plan") -> pd.DataFrame | None:
    """The label table of an atlas (``index``, ``name`` and any columns), or None."""
    if spec.labels is None:
        return None
    table = read_table(spec.labels, f"{key}.labels", label, ("index", "name"))
    index = pd.to_numeric(table["index"], errors="coerce").to_numpy(dtype=float)
    bad = np.flatnonzero(~np.isfinite(index) | (index != np.round(index)))
    if bad.size:
        raise InputDataError(
            f"{label}, {key}.labels ({where(spec.labels, int(bad[0]) + 2, 'index')}): "
            f"{table['index'].iloc[bad[0]]!r} is not an integer label; give the atlas value")
    table["index"] = index.astype(np.int64)
    table["name"] = table["name"].astype(str)
    return table


@dataclass(frozen=True)
class DBSPatient:
    """One DBS patient: outcome, VAT images and active contacts (either may be empty)."""

    patient: str
    outcome: float
    vat_files: tuple[Path, ...]
    contacts: pd.DataFrame = field(compare=False, repr=False)


def read_dbs_table(spec: DBS, label: str = "analysis plan") -> list[DBSPatient]:
    """Read the DBS table: one or more rows per patient.

    A row gives VAT images (columns ``vat``, ``vat_left``, ``vat_right``; paths relative
    to the table's folder) or one active contact (``side, x, y, z, amplitude`` and
    optional ``unit``, ``pulse_width_us``, ``impedance_ohm``).  The outcome must be the
    same on every row of a patient.

    Returns
    -------
    list of DBSPatient
        In order of first appearance.
    """
    key = "dbs.table"
    table = read_table(spec.table, key, label, (spec.patient_column, spec.outcome_column))
    vat_columns = [c for c in VAT_COLUMNS if c in table.columns]
    has_contacts = all(c in table.columns for c in CONTACT_COLUMNS)
    if not vat_columns and not has_contacts:
        raise InputDataError(
            f"{label}, {key} ({where(spec.table, 1)}): no VAT columns ({', '.join(VAT_COLUMNS)}) "
            f"and no contact columns ({', '.join(CONTACT_COLUMNS)}); add VAT image paths or "
            "the active contacts' coordinates and amplitudes")
    outcome = pd.to_numeric(table[spec.outcome_column], errors="coerce").to_numpy(dtype=float)
    bad = np.flatnonzero(~np.isfinite(outcome))
    if bad.size:
        raise InputDataError(
            f"{label}, {key} ({where(spec.table, int(bad[0]) + 2, spec.outcome_column)}): "
            f"{table[spec.outcome_column].iloc[bad[0]]!r} is not a number; give the outcome "
            "(e.g. % seizure reduction) of every row")
    empty = np.flatnonzero(table[spec.patient_column].isna().to_numpy())
    if empty.size:
        raise InputDataError(
            f"{label}, {key} ({where(spec.table, int(empty[0]) + 2, spec.patient_column)}): "
            "empty patient label; label every row")
    if "unit" not in table.columns and spec.unit is None and has_contacts:
        needs_unit = any(
            not any(pd.notna(table[c].iloc[i]) for c in vat_columns) for i in range(len(table))
        )
        if needs_unit:
            raise InputDataError(
                f"{label}, dbs.unit: the contacts' amplitude unit is unknown; set dbs.unit "
                "to mA or V, or add a 'unit' column to the DBS table")
    patients: dict[str, dict] = {}
    for i in range(len(table)):
        row = table.iloc[i]
        name = str(row[spec.patient_column]).strip()
        entry = patients.setdefault(name, {"outcome": outcome[i], "files": [], "contacts": []})
        if not np.isclose(entry["outcome"], outcome[i]):
            raise InputDataError(
                f"{label}, {key} ({where(spec.table, i + 2, spec.outcome_column)}): patient "
                f"'{name}' has outcomes {entry['outcome']:g} and {outcome[i]:g}; give one "
                "outcome per patient")
        files = [row[c] for c in vat_columns if pd.notna(row[c])]
        for column in vat_columns:
            value = row[column]
            if pd.isna(value):
                continue
            path = Path(str(value).strip()).expanduser()
            path = path if path.is_absolute() else spec.table.parent / path
            if not path.is_file():
                raise MissingInputError(
                    f"{label}, {key} ({where(spec.table, i + 2, column)}): VAT image not "
                    f"found: {path}; paths in the table are relative to its folder")
            entry["files"].append(path)
        if not files:
            if not has_contacts or any(pd.isna(row[c]) for c in CONTACT_COLUMNS):
                raise InputDataError(
                    f"{label}, {key} ({where(spec.table, i + 2)}): the row has neither a VAT "
                    f"image nor a complete contact ({', '.join(CONTACT_COLUMNS)}); fill one")
            entry["contacts"].append(i)
    if has_contacts:
        contacts_all = table.rename(columns={spec.patient_column: "patient"})
        contacts_all["patient"] = contacts_all["patient"].astype(str).str.strip()
        for column in ("x", "y", "z", "amplitude"):
            rows = [r for e in patients.values() for r in e["contacts"]]
            values = pd.to_numeric(contacts_all[column].iloc[rows], errors="coerce")
            bad = [r for r, v in zip(rows, values) if not np.isfinite(v)]
            if bad:
                raise InputDataError(
                    f"{label}, {key} ({where(spec.table, bad[0] + 2, column)}): "
                    f"{contacts_all[column].iloc[bad[0]]!r} is not a number; give a number")
    out = []
    for name, entry in patients.items():
        contacts = (
            contacts_all.iloc[entry["contacts"]].reset_index(drop=True)
            if entry["contacts"] else pd.DataFrame()
        )
        out.append(DBSPatient(name, float(entry["outcome"]), tuple(entry["files"]), contacts))
    if len(out) < 4:
        raise InputDataError(
            f"{label}, {key} ({spec.table}): {len(out)} patient(s); the DBS analyses need at "
            "least 4 (leave-one-out prediction); add patients or remove the dbs section")
    if np.ptp([p.outcome for p in out]) == 0:
        raise InputDataError(
            f"{label}, {key} ({spec.table}): every patient has the same outcome; the R-map "
            "and the prediction need outcomes that vary")
    return out
