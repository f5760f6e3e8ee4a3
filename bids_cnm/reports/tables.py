"""Reading the run's tables for the report, and writing numbers for people."""

from __future__ import annotations

import numpy as np
import pandas as pd

from bids_cnm.reports.index import DerivFile

__all__ = ["read_tsv", "read_text_tsv", "fmt", "fmt_p", "formatted", "first_row", "read_matrix"]


def read_tsv(f: DerivFile) -> pd.DataFrame:
    """A TSV with ``n/a`` as missing."""
    return pd.read_csv(f.path, sep="\t", na_values=["n/a"], keep_default_na=True)


def read_text_tsv(f: DerivFile) -> pd.DataFrame:
    """A TSV as text, exactly as on disk."""
    return pd.read_csv(f.path, sep="\t", dtype=str, keep_default_na=False)


def first_row(f: DerivFile) -> dict:
    """The first row of a one-row summary table (``{}`` when it has none)."""
    frame = read_tsv(f)
    return frame.iloc[0].to_dict() if len(frame) else {}


def fmt(value: object, digits: int = 3) -> str:
    """A number with ``digits`` significant digits; other values as text."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(int(value))
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return str(value)
    if not np.isfinite(number):
        return "n/a"
    if number.is_integer() and abs(number) < 1e6:
        return str(int(number))
    return f"{number:.{digits}g}"


def fmt_p(p: object) -> str:
    """A p-value: ``p = 0.012``, ``p < 0.001`` below a thousandth."""
    try:
        value = float(p)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "p n/a"
    if not np.isfinite(value):
        return "p n/a"
    return "p < 0.001" if value < 0.001 else f"p = {value:.3g}"


def formatted(frame: pd.DataFrame, digits: int = 4) -> pd.DataFrame:
    """Floats with ``digits`` significant digits (for tables people read)."""
    out = frame.copy()
    for column in out.columns:
        if pd.api.types.is_float_dtype(out[column]):
            out[column] = [fmt(v, digits) for v in out[column]]
    return out


def _numeric(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if pd.api.types.is_numeric_dtype(frame[c])]


def read_matrix(frame: pd.DataFrame) -> tuple[np.ndarray, list[str], list[str]]:
    """A correlation matrix from a TSV in one of three layouts.

    * square, first column the row labels (``pandas.DataFrame.to_csv`` with an index);
    * square, all numeric (labels = column names);
    * long: two label columns and a numeric one (``a, b, r``), made symmetric.
    """
    numeric = _numeric(frame)
    labels = [c for c in frame.columns if c not in numeric]
    if (labels and labels[0] == frame.columns[0] and len(labels) == 1
            and len(numeric) == len(frame) >= 1):
        matrix = frame[numeric].to_numpy(dtype=float)
        return matrix, [str(v) for v in frame[labels[0]]], [str(c) for c in numeric]
    if not labels and len(numeric) == len(frame):
        return frame.to_numpy(dtype=float), [str(c) for c in numeric], [str(c) for c in numeric]
    if len(labels) >= 2 and numeric:
        a, b, value = labels[0], labels[1], numeric[0]
        names = list(dict.fromkeys([*map(str, frame[a]), *map(str, frame[b])]))
        pos = {n: i for i, n in enumerate(names)}
        matrix = np.full((len(names), len(names)), np.nan)
        np.fill_diagonal(matrix, 1.0)
        for x, y, v in zip(frame[a], frame[b], frame[value]):
            matrix[pos[str(x)], pos[str(y)]] = matrix[pos[str(y)], pos[str(x)]] = v
        return matrix, names, names
    raise ValueError(
        "not a correlation matrix: expected a square table (optionally with a first column "
        "of labels) or a long table with two label columns and a value column"
    )
