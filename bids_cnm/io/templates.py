"""Template-space resources from TemplateFlow, on the connectome's own grid, offline.

The analyses need a few images of the connectome's template: a grey-matter mask (where
randomly relocated coordinates and the degree check's sample voxels may fall) and a
labelled anatomical atlas (names of peaks in the report).  They come from TemplateFlow in
the connectome's template (``MNI152NLin6Asym`` as FSL/GSP/XCP-D write it,
``MNI152NLin2009cAsym`` as fMRIPrep does), fetched into the container at build time
(``python -m bids_cnm.io.templates fetch``).  At run time nothing is downloaded: a file
TemplateFlow has not fetched (its skeleton holds empty placeholders) counts as missing,
and the app then falls back to nilearn's bundled MNI152 templates (grey matter) or to no
labels (atlas), and says so.

Every function returns where its image came from (``source``), so the log, the sidecars
and the report can state it.

========================  ===============================================  ===================
resource                  TemplateFlow (first found)                       fallback
========================  ===============================================  ===================
grey matter               ``label-GM_probseg`` >= 0.5; else the grey-matter nilearn
                          labels of the Harvard-Oxford subcortical atlas    ``load_mni152_gm_
                                                                            template`` >= 0.5
                          (``atlas-HOSPA_desc-th25_dseg``: cortex and
                          subcortical nuclei)
anatomical labels         ``atlas-HOCPA_desc-th25`` (cortical) and          none
                          ``atlas-HOSPA_desc-th25`` (subcortical) dsegs
========================  ===============================================  ===================
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import nibabel as nb
import numpy as np
import pandas as pd

LOGGER = logging.getLogger("bids_cnm")

__all__ = [
    "SPACES",
    "Atlas",
    "GreyMatterSource",
    "anatomical_atlas",
    "fetch",
    "grey_matter_mask",
    "grey_matter_on_grid",
    "grey_matter_source",
    "load_mask",
    "local_file",
    "on_grid",
    "templateflow_home",
]

#: the templates whose resources are fetched into the container
SPACES = ("MNI152NLin6Asym", "MNI152NLin2009cAsym")

#: resolutions fetched (mm); a grid takes the nearest
RESOLUTIONS = (1, 2)

#: what :func:`fetch` downloads for each template and resolution (TemplateFlow entities)
RESOURCES = (
    {"label": "GM", "suffix": "probseg"},
    {"atlas": "HOSPA", "desc": "th25", "suffix": "dseg"},
    {"atlas": "HOCPA", "desc": "th25", "suffix": "dseg"},
)

#: Harvard-Oxford subcortical labels that are not grey matter
_NOT_GREY = ("white matter", "ventric", "background", "brainstem", "brain-stem")

#: labels of the subcortical atlas that the cortical atlas names better (or not at all)
_UNNAMED = ("cerebral cortex", "white matter", "background", "ventric")

#: a voxel is grey matter where the (linearly interpolated) probability is at least this
GM_THRESHOLD = 0.5

_FALLBACK = ("nilearn's bundled MNI152 grey-matter template >= 0.5 "
             "(TemplateFlow {what} not available)")


def templateflow_home() -> Path | None:
    """TemplateFlow's folder when it exists (``$TEMPLATEFLOW_HOME`` or its default), else None.

    TemplateFlow is imported only when its folder exists: importing it otherwise would
    create (write) its skeleton, which a read-only container must not attempt.
    """
    home = os.environ.get("TEMPLATEFLOW_HOME")
    path = Path(home) if home else Path.home() / ".cache" / "templateflow"
    return path if path.is_dir() else None


def local_file(template: str, **entities) -> Path | None:
    """The one local TemplateFlow file matching ``entities``, never downloading.

    Parameters
    ----------
    template : str
        TemplateFlow template name, e.g. ``MNI152NLin6Asym``.
    **entities
        TemplateFlow query (``resolution``, ``label``, ``atlas``, ``desc``, ``suffix``...).

    Returns
    -------
    Path or None
        ``None`` when TemplateFlow is not set up, the template is unknown, or the file is
        not fetched (an empty placeholder).
    """
    home = templateflow_home()
    if home is None or not (home / f"tpl-{template}").is_dir():
        return None
    # match file names directly: TemplateFlow's own query indexes its whole folder with
    # pybids first (~20 s), for a lookup that is a directory listing
    wanted = {("res" if k == "resolution" else k): v for k, v in entities.items()}
    suffix = wanted.pop("suffix", None)
    extensions = wanted.pop("extension", [".nii.gz"])
    extensions = [extensions] if isinstance(extensions, str) else list(extensions)
    found = []
    for path in sorted((home / f"tpl-{template}").rglob(f"tpl-{template}_*")):
        name = path.name
        ext = next((e for e in extensions if name.endswith(e)), None)
        if ext is None:
            continue
        *pairs, last = name[: -len(ext)].split("_")
        have = dict(pair.split("-", 1) for pair in pairs if "-" in pair)
        if (suffix is None or last == suffix) and all(
                _same_entity(have.get(k), v) for k, v in wanted.items()):
            found.append(path)
    # fetched files only; the skeleton holds empty placeholders for the rest
    fetched = [p for p in found if p.is_file() and p.stat().st_size > 0]
    return fetched[0] if len(fetched) == 1 else None


def _same_entity(have: str | None, want: object) -> bool:
    """Whether a file name's entity value is the query's (``res-01`` equals 1)."""
    if have is None:
        return False
    if isinstance(want, (list, tuple)):
        return any(_same_entity(have, w) for w in want)
    if have.isdigit() and str(want).isdigit():
        return int(have) == int(want)
    return have == str(want)


def _nearest_resolution(affine: np.ndarray) -> int:
    voxel = float(np.mean(np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)))
    return min(RESOLUTIONS, key=lambda r: abs(r - voxel))


def on_grid(img: nb.Nifti1Image, shape: tuple[int, ...], affine: np.ndarray,
             interpolation: str) -> np.ndarray:
    """``img`` resampled onto the grid (nearest for labels, linear for probabilities)."""
    from nilearn.image import resample_img

    shape = tuple(int(n) for n in shape[:3])
    if img.shape[:3] == shape and np.allclose(img.affine, affine, atol=1e-4):
        return np.asanyarray(img.dataobj)
    resampled = resample_img(img, target_affine=np.asarray(affine), target_shape=shape,
                             interpolation=interpolation, force_resample=True,
                             copy_header=True)
    return np.asanyarray(resampled.dataobj)


def _label_table(dseg: Path) -> pd.DataFrame | None:
    """Label names of a TemplateFlow dseg (``index``, ``name``).

    The TSV sits beside the image (``tpl-<t>_atlas-<a>_dseg.tsv``); templates that share
    an atlas without a TSV of their own (Harvard-Oxford in ``MNI152NLin2009cAsym``) take
    another template's table of the same atlas.
    """
    tables = _label_tables(dseg)
    if not tables:
        return None
    table = pd.read_csv(tables[0], sep="\t", quoting=3)
    table["name"] = table["name"].astype(str).str.strip()
    return table[["index", "name"]]


def _label_tables(dseg: Path) -> list[Path]:
    """The label tables :func:`_label_table` may read for ``dseg`` (the first is read)."""
    atlas = next((part for part in dseg.name.split("_") if part.startswith("atlas-")), None)
    if atlas is None:
        return []
    return sorted(dseg.parent.glob(f"*_{atlas}_dseg.tsv")) or sorted(
        dseg.parent.parent.glob(f"tpl-*/*_{atlas}_dseg.tsv"))


def load_mask(path: str | os.PathLike) -> nb.Nifti1Image:
    """A user's mask (binary or probabilities) as a 3-D float32 image.

    Raises
    ------
    MissingInputError, ReadError, InputDataError
        A missing file, one that is not NIfTI, or one that is not 3-D.
    """
    from bids_cnm.errors import InputDataError, MissingInputError, ReadError

    path = Path(path)
    if not path.exists():
        raise MissingInputError(f"{path}: grey-matter mask not found; check the path")
    try:
        img = nb.load(path)
        data = np.asanyarray(img.dataobj, dtype=np.float32)
    except Exception as exc:
        raise ReadError(f"{path}: cannot read the mask as NIfTI ({exc}); give a .nii/.nii.gz "
                        "file") from exc
    data = np.squeeze(data)
    if data.ndim != 3:
        raise InputDataError(f"{path}: the mask has shape {data.shape}; give a 3-D image")
    return nb.Nifti1Image(data, img.affine)


@dataclass(frozen=True)
class GreyMatterSource:
    """Where a grid's grey matter comes from (see :func:`grey_matter_source`).

    Attributes
    ----------
    kind : {'probseg', 'dseg', 'nilearn', 'mask'}
        A probability map thresholded at ``threshold`` (TemplateFlow's ``probseg``,
        nilearn's bundled template or a user's ``mask``), or an atlas's grey labels.
    path : Path or None
        The file (``None`` for nilearn's bundled template).
    description : str
        For the log and the sidecars.
    threshold : float
        Minimum interpolated value of a grey-matter voxel (probability maps).
    """

    kind: str
    path: Path | None
    description: str
    threshold: float = GM_THRESHOLD

    def identity(self) -> list:
        """What :func:`grey_matter_on_grid` gives depends on besides the grid (a saved
        mask's key): the rule's version, the files, and nilearn's (its resampling, its
        bundled template)."""
        from importlib.metadata import version

        from bids_cnm.io.stamps import stat_row

        files = [self.path] if self.path is not None else []
        if self.kind == "dseg":
            files += _label_tables(self.path)[:1]
        return [GREY_MATTER_FORMAT, self.kind, self.threshold,
                [stat_row(f, f) for f in files], version("nilearn")]


#: version of the rules of grey_matter_on_grid (part of a saved mask's key)
GREY_MATTER_FORMAT = 1


def grey_matter_source(space: str | None, affine: np.ndarray) -> GreyMatterSource:
    """The grey matter of ``space`` that :func:`grey_matter_mask` resamples (no resampling).

    TemplateFlow's ``GM`` probseg at the grid's nearest resolution, else the grey labels
    of its Harvard-Oxford subcortical atlas, else nilearn's bundled MNI152 template.
    """
    res = _nearest_resolution(affine)
    if space:
        probseg = local_file(space, resolution=res, label="GM", suffix="probseg")
        if probseg is not None:
            return GreyMatterSource("probseg", probseg,
                                    f"TemplateFlow {probseg.name} >= {GM_THRESHOLD}")
        dseg = local_file(space, resolution=res, atlas="HOSPA", desc="th25", suffix="dseg")
        if dseg is not None and _label_table(dseg) is not None:
            return GreyMatterSource("dseg", dseg,
                                    f"TemplateFlow {dseg.name} (grey-matter labels)")
    what = f"grey matter of {space}" if space else "grey matter (no template space)"
    return GreyMatterSource("nilearn", None, _FALLBACK.format(what=what))


def grey_matter_on_grid(source: GreyMatterSource, shape: tuple[int, ...],
                        affine: np.ndarray) -> np.ndarray:
    """The grey-matter mask of ``source`` on the grid (bool, ``shape``).

    Probability maps are interpolated linearly at the voxel centres, atlas labels by
    nearest neighbour.
    """
    if source.kind == "dseg":
        table = _label_table(source.path)
        grey = [int(i) for i, name in zip(table["index"], table["name"])
                if not any(word in name.lower() for word in _NOT_GREY)]
        labels = on_grid(nb.load(source.path), shape, affine, "nearest")
        return np.isin(labels, grey)
    if source.kind == "nilearn":
        from nilearn.datasets import load_mni152_gm_template

        img = load_mni152_gm_template(resolution=1)
    elif source.kind == "mask":
        img = load_mask(source.path)
    else:
        img = nb.load(source.path)
    return on_grid(img, shape, affine, "linear") >= source.threshold


def grey_matter_mask(space: str | None, shape: tuple[int, ...],
                     affine: np.ndarray) -> tuple[np.ndarray, str]:
    """A grey-matter mask of ``space`` on the connectome's grid.

    Parameters
    ----------
    space : str or None
        The connectome's template (e.g. ``MNI152NLin6Asym``).
    shape, affine
        The connectome's grid.

    Returns
    -------
    mask : ndarray of bool
    source : str
        Where it came from, for the log and the sidecars.
    """
    source = grey_matter_source(space, affine)
    return grey_matter_on_grid(source, shape, affine), source.description


@dataclass(frozen=True)
class Atlas:
    """Labelled anatomical atlases on one grid: the first atlas with a label wins."""

    labels: tuple[np.ndarray, ...]
    names: tuple[dict[int, str], ...]
    affine: np.ndarray
    source: str

    def label_at(self, xyz_mm: np.ndarray) -> str:
        """The anatomical name at an MNI coordinate ('' outside every labelled region)."""
        inv = np.linalg.inv(self.affine)
        ijk = np.rint(inv[:3, :3] @ np.asarray(xyz_mm, float) + inv[:3, 3]).astype(int)
        for labels, names in zip(self.labels, self.names):
            if np.any(ijk < 0) or np.any(ijk >= labels.shape[:3]):
                continue
            name = names.get(int(labels[tuple(ijk)]), "")
            if name and not any(word in name.lower() for word in _UNNAMED):
                return name
        return ""


def anatomical_atlas(space: str | None, affine: np.ndarray | None = None) -> Atlas | None:
    """Harvard-Oxford subcortical then cortical labels of ``space`` (``None`` offline).

    The subcortical atlas comes first: it names nuclei (thalamus, putamen...) and calls
    the cortex just "Cerebral Cortex", which the cortical atlas then resolves.
    """
    if not space:
        return None
    res = _nearest_resolution(affine) if affine is not None else 2
    labels, names, sources = [], [], []
    grid = None
    for atlas in ("HOSPA", "HOCPA"):
        dseg = local_file(space, resolution=res, atlas=atlas, desc="th25", suffix="dseg")
        table = _label_table(dseg) if dseg is not None else None
        if table is None:
            continue
        img = nb.load(dseg)
        if grid is None:
            grid = img
        labels.append(on_grid(img, grid.shape, grid.affine, "nearest"))
        names.append({int(i): n for i, n in zip(table["index"], table["name"]) if int(i)})
        sources.append(dseg.name)
    if not labels:
        return None
    return Atlas(tuple(labels), tuple(names), np.asarray(grid.affine),
                 "TemplateFlow " + ", ".join(sources))


def fetch(spaces: tuple[str, ...] = SPACES,
          resolutions: tuple[int, ...] = RESOLUTIONS) -> list[Path]:
    """Download the resources above (build time, with network); returns the local files.

    Resources a template does not have (e.g. a GM probseg of ``MNI152NLin6Asym``) are
    skipped; the label tables come with TemplateFlow's skeleton.
    """
    from templateflow import api

    paths = []
    for space in spaces:
        for res in resolutions:
            for entities in RESOURCES:
                if not api.ls(space, resolution=res, extension=[".nii.gz"], **entities):
                    continue
                got = api.get(space, resolution=res, extension=[".nii.gz"], **entities)
                paths.extend(Path(p) for p in (got if isinstance(got, list) else [got]))
    return paths


def main(argv: list[str] | None = None) -> int:
    """``python -m bids_cnm.io.templates fetch``: download the templates (image build)."""
    parser = argparse.ArgumentParser(prog="python -m bids_cnm.io.templates",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["fetch", "list"],
                        help="fetch: download the resources; list: show what is local")
    args = parser.parse_args(argv)
    if args.action == "fetch":
        for path in fetch():
            print(path)
        return 0
    for space in SPACES:
        for res in RESOLUTIONS:
            for entities in RESOURCES:
                found = local_file(space, resolution=res, **entities)
                print(f"{space} res-{res} {entities}: {found or 'not available'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
