"""What the columns of the output tables mean: one description per column name.

Every TSV bids_cnm writes gets a JSON sidecar with a ``Description`` of each of
its columns (BIDS "tabular files").  Column names repeat across tables (``x``,
``r_with_main``...), so they are described once here; a writer may pass more
specific descriptions, and columns named after data (a correlation matrix's
variants, the coordinate table's own columns in ``seeds.tsv``) get one from
:func:`column_sidecar`'s ``fallback``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

COLUMNS: dict[str, str] = {
    # seeds.tsv
    "id": "Seed identifier (the seed-<id> entity of the seed's files).",
    "set": "Coordinate set of the seed (primary, control..., random: relocated studies).",
    "study": "Study the seed's coordinates come from.",
    "variant": "Seed or network variant, spelt as in the file names' variant entity (main: "
    "the main seeds; thresh-<T>: the main seeds at another threshold).",
    "n_coordinates": "Coordinates united in the seed (0: a seed given as a mask).",
    "coordinates": "The seed's MNI coordinates in mm, 'x,y,z' separated by ';'.",
    "diameter_mm": "Diameter of the sphere at each coordinate, in mm.",
    "voxels": "Voxels of the seed on the connectome grid.",
    "relocated_from": "Study whose coordinates were randomly relocated into this seed.",
    # peaks and clusters
    "map": "Map the peak was found in (desc entity of the map).",
    "cluster": "Cluster number (1: the largest |value| first).",
    "sign": "Sign of the cluster's values (1 positive, -1 negative).",
    "x": "MNI x of the peak, mm.",
    "y": "MNI y of the peak, mm.",
    "z": "MNI z of the peak, mm.",
    "value": "Map value at the peak.",
    "cluster_size_mm3": "Volume of the cluster, mm^3.",
    # sensitivity and connectome tables
    "seed_variant": "Seeds of the network: main, or the seed variant (d<D>mm: other sphere "
    "diameter, percoord: one seed per coordinate).",
    "threshold": "|t| threshold of the network.",
    "n_studies": "Study networks in the overlap.",
    "n_positive_voxels": "Voxels where the signed overlap is positive.",
    "n_negative_voxels": "Voxels where the signed overlap is negative.",
    "r_with_main": "Pearson r, over the analysis mask, of this signed overlap map with the "
    "main network's.",
    "file": "The variant's signed overlap map, relative to the derivatives folder.",
    "network": "Network compared (main: the main network; others: the variant).",
    "n_subjects": "Connectome subjects the network was computed from.",
    "n_voxels_compared": "Voxels inside both connectomes' analysis masks.",
}


def column_sidecar(
    columns: Iterable[str],
    specific: Mapping[str, str] | None = None,
    fallback: Callable[[str], str] | None = None,
) -> dict[str, dict[str, str]]:
    """BIDS column descriptions of a table.

    Parameters
    ----------
    columns : iterable of str
        The table's columns.
    specific : mapping, optional
        Descriptions that win over :data:`COLUMNS` for this table.
    fallback : callable, optional
        Description of a column neither mapping knows.

    Returns
    -------
    dict
        ``{column: {"Description": text}}`` for every column that has one.
    """
    known = {**COLUMNS, **(specific or {})}
    out = {}
    for column in columns:
        text = known.get(str(column))
        if text is None and fallback is not None:
            text = fallback(str(column))
        if text:
            out[str(column)] = {"Description": text}
    return out
