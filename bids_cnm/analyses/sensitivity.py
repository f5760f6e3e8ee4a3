"""Sensitivity: the overlap network under other choices, and how alike they all are.

Every variant comes from t-maps of the same single pass over the connectome:

* thresholds — the same t-maps binarized at other |t| thresholds;
* sphere diameters and one seed per coordinate — extra seeds (``variant``
  column ``d<diameter>mm`` / ``percoord``) computed alongside the main ones;
* subgroups — the overlap of the studies of one level of a metadata column
  (e.g. ``modality`` = fMRI) and the overlap leaving that level out.

The spatial correlation between all variants' signed overlap maps, over the
analysis mask, summarizes how much the network depends on these choices.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from bids_cnm.engine.group_results import GroupResults
from bids_cnm.engine.seeds import seed_label
from bids_cnm.stats.overlap import overlap_maps, threshold_label


@dataclass(frozen=True)
class Variant:
    """One overlap network: which seeds, which threshold, and its label.

    Attributes
    ----------
    label : str
        Unique, spelt as in the file names (``main``, ``thresh-4p7``, ``d3mm``,
        ``modalityfMRI``, ``modalityWithoutfMRI``...): the ``variant`` entity, or
        ``thresh-<T>`` for the main seeds at another threshold.
    set_name, variant : str
        Seeds are those of this set and seed variant.
    threshold : float
    columns : tuple of int
        Seed columns of :class:`~bids_cnm.engine.group_results.GroupResults`.
    entity : str or None
        The BIDS ``variant`` label in file names (``None`` for the main seeds, whose
        threshold variants differ by their ``thresh`` entity only).
    """

    label: str
    set_name: str
    variant: str
    threshold: float
    columns: tuple[int, ...]
    entity: str | None


def subgroup_levels(table: pd.DataFrame, column: str) -> list[str]:
    """Distinct levels of a seed metadata column (a study with mixed values, ``a+b``,
    counts for each of its levels)."""
    if column not in table.columns:
        raise KeyError(column)
    levels: set[str] = set()
    for value in table[column].astype(str):
        levels.update(v for v in value.split("+") if v)
    return sorted(levels)


def _has_level(values: pd.Series, level: str) -> np.ndarray:
    return values.astype(str).map(lambda v: level in v.split("+")).to_numpy()


def enumerate_variants(
    results: GroupResults,
    set_name: str,
    main_threshold: float,
    thresholds: list[float] = (),
    subgroup_columns: list[str] = (),
) -> list[Variant]:
    """All overlap variants of one coordinate set that the seeds and settings allow.

    Parameters
    ----------
    results : GroupResults
    set_name : str
        The coordinate set (e.g. ``primary``).
    main_threshold : float
        The main |t| threshold.
    thresholds : list of float
        Other thresholds.
    subgroup_columns : list of str
        Seed metadata columns defining subgroups.

    Returns
    -------
    list of Variant
        The main network first.
    """
    table = results.seeds.table
    main = tuple(results.columns(set_name, "main"))
    if not main:
        raise ValueError(f"no seeds of set '{set_name}'")
    out = [Variant("main", set_name, "main", main_threshold, main, None)]
    for threshold in thresholds:
        if threshold != main_threshold:
            label = f"thresh-{threshold_label(threshold)}"
            out.append(Variant(label, set_name, "main", threshold, main, None))
    in_set = (table["set"] == set_name).to_numpy()
    for variant in sorted(set(table.loc[in_set, "variant"]) - {"main"}):
        columns = tuple(results.columns(set_name, variant))
        out.append(Variant(variant, set_name, variant, main_threshold, columns, variant))
    for column in subgroup_columns:
        sub = table.iloc[list(main)]
        for level in subgroup_levels(sub, column):
            has = _has_level(sub[column], level)
            tag = seed_label(f"{column}{level}")
            if has.any():
                out.append(Variant(tag, set_name, "main", main_threshold,
                                   tuple(np.asarray(main)[has]), tag))
            if (~has).any() and has.any():
                without = seed_label(f"{column}Without{level}")
                out.append(Variant(without, set_name, "main", main_threshold,
                                   tuple(np.asarray(main)[~has]), without))
    return out


def variant_maps(results: GroupResults, variants: list[Variant]) -> dict[str, dict]:
    """Overlap maps (signed, positive, negative) of every variant, over the mask."""
    return {v.label: overlap_maps(_columns(results.t, v.columns), v.threshold)
            for v in variants}


def _columns(values: np.ndarray, columns: tuple[int, ...]) -> np.ndarray:
    """``values[:, columns]``; a view when the columns are consecutive (the main seeds
    usually are: no copy of every t-map of the set)."""
    if len(columns) and tuple(columns) == tuple(range(columns[0], columns[0] + len(columns))):
        return values[:, columns[0]:columns[0] + len(columns)]
    return values[:, list(columns)]


def correlation_matrix(maps: dict[str, np.ndarray]) -> pd.DataFrame:
    """Pearson correlations between maps (columns of equal length).

    Maps with no variance (e.g. an empty overlap) give NaN rows/columns.

    Returns
    -------
    DataFrame
        Square, labelled by the maps' names.
    """
    labels = list(maps)
    stack = np.stack([np.asarray(maps[k], dtype=np.float64) for k in labels])
    with np.errstate(invalid="ignore", divide="ignore"):
        matrix = np.corrcoef(stack) if len(labels) > 1 else np.ones((1, 1))
    return pd.DataFrame(matrix, index=labels, columns=labels)
