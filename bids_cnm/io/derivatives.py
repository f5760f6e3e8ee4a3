"""Write BIDS derivatives: names, sidecars, dataset_description.json, atomic files.

Names follow BIDS with four entities BIDS does not define yet, registered in
the pybids config shipped with the package (``bids_cnm/data/bids_cnm_config.json``):
``seed-<id>``, ``stat-<r|z|t|...>``, ``set-<name>``, ``thresh-<T>`` (``5p1`` for
5.1), ``variant-<label>`` (sensitivity variants) and ``control-<set>``
(specificity comparisons).  See ``docs/outputs.md`` for the full scheme.

Every file is written to a temporary name in its final folder and renamed into
place, so a crash never leaves a half-written output behind.
"""

from __future__ import annotations

import gzip
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import nibabel as nb
import numpy as np
import pandas as pd

from bids_cnm import __version__
from bids_cnm.errors import OutputError

try:  # python-isal: the same DEFLATE format, several times faster than zlib
    from isal import igzip as _igzip
except ImportError:  # pragma: no cover - exercised only without isal installed
    _igzip = None

#: order of entities in file names (BIDS order, then ours)
ENTITY_ORDER = (
    "sub", "ses", "task", "run", "space", "res", "set", "control", "variant", "seed", "thresh",
    "stat", "desc",
)
CODE_URL = "https://github.com/bids-cnm/bids_cnm"
PYBIDS_CONFIG = Path(__file__).resolve().parent.parent / "data" / "bids_cnm_config.json"


def bids_name(entities: Mapping[str, object], suffix: str, extension: str) -> str:
    """Compose a BIDS file name from entities in canonical order.

    Parameters
    ----------
    entities : mapping
        Entity short names (``sub``, ``space``, ``seed``…) to labels; ``None``
        values are skipped.
    suffix : str
        e.g. ``boldmap``, ``mask``, ``peaks``.
    extension : str
        e.g. ``.nii.gz``.

    Returns
    -------
    str
    """
    unknown = set(entities) - set(ENTITY_ORDER)
    if unknown:
        raise ValueError(f"unknown entities {sorted(unknown)}")
    parts = [f"{k}-{entities[k]}" for k in ENTITY_ORDER if entities.get(k) not in (None, "")]
    return "_".join(parts + [suffix]) + extension


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: permissions of a new file as open() would give it (mkstemp makes files private)
_FILE_MODE = 0o666 & ~_umask()


def _temporary(path: Path, suffix: str) -> str:
    """A temporary file beside ``path`` with the permissions of an ordinary new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    os.chmod(tmp, _FILE_MODE)
    return tmp


def _atomic_write_bytes(path: Path, write) -> None:
    tmp = _temporary(path, ".part")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: Path, content: Mapping) -> Path:
    """Write JSON atomically (left untouched when the file already says the same)."""
    text = json.dumps(content, indent=2, sort_keys=False, default=_jsonable) + "\n"
    encoded = text.encode("utf-8")
    if not _same_content(Path(path), encoded):
        _atomic_write_bytes(Path(path), lambda tmp: Path(tmp).write_bytes(encoded))
    return Path(path)


def write_text(path: Path, text: str) -> Path:
    """Write a text file atomically (UTF-8)."""
    _atomic_write_bytes(Path(path), lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return Path(path)


def write_tsv(path: Path, table: pd.DataFrame) -> Path:
    """Write a TSV atomically (``n/a`` for missing values, as BIDS asks)."""
    _atomic_write_bytes(
        Path(path), lambda tmp: table.to_csv(tmp, sep="\t", index=False, na_rep="n/a")
    )
    return Path(path)


#: gzip level of NIfTI outputs: level 1 of ISA-L deflates maps ~5x faster than zlib's
#: level 1 (nibabel's default) and about as small; higher levels gain a few percent
NIFTI_COMPRESSLEVEL = 1


def _gzip(raw: bytes) -> bytes:
    """gzip with ISA-L when installed (zlib otherwise); mtime 0: same data, same bytes."""
    if _igzip is not None:
        return _igzip.compress(raw, NIFTI_COMPRESSLEVEL, mtime=0)
    return gzip.compress(raw, NIFTI_COMPRESSLEVEL, mtime=0)


def write_nifti(path: Path, img: nb.Nifti1Image) -> Path:
    """Write a NIfTI image atomically (the temporary keeps the final extension).

    ``.nii.gz`` is deflated in memory at :data:`NIFTI_COMPRESSLEVEL`; a file that
    already holds exactly these bytes (a re-run) is left untouched.
    """
    path = Path(path)
    content = img.to_bytes()
    if path.name.endswith(".nii.gz"):
        content = _gzip(content)
    if _same_content(path, content):
        return path
    _atomic_write_bytes(path, lambda tmp: Path(tmp).write_bytes(content))
    return path


def _same_content(path: Path, content: bytes) -> bool:
    """Whether ``path`` exists with exactly ``content`` (then it need not be rewritten)."""
    try:
        if path.stat().st_size != len(content):
            return False
        return path.read_bytes() == content
    except OSError:
        return False


def _jsonable(value: object) -> object:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serializable: {type(value)}")


class DerivativesWriter:
    """Writes maps with sidecars into a BIDS derivatives folder.

    Parameters
    ----------
    root : Path
        The output directory (created when missing).
    source_dataset : Path
        The connectome (recorded in ``SourceDatasets``).
    settings : dict
        Settings recorded in every sidecar (``bids_cnm`` key).
    spatial_reference : str
        Template name of the grid (e.g. ``MNI152NLin2009cAsym``).
    """

    def __init__(
        self,
        root: Path,
        source_dataset: Path,
        settings: Mapping,
        spatial_reference: str,
    ) -> None:
        self.root = Path(root)
        self.source_dataset = Path(source_dataset)
        self.settings = dict(settings)
        self.spatial_reference = spatial_reference
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create OUTPUT_DIR {self.root}: {exc}") from exc

    def write_dataset_description(self) -> Path:
        """Write ``dataset_description.json`` (DatasetType derivative)."""
        generated = {"Name": "bids_cnm", "Version": __version__, "CodeURL": CODE_URL}
        container = os.environ.get("BIDS_CNM_CONTAINER")
        if container:
            generated["Container"] = {"Type": container, "Tag": f"bids_cnm:{__version__}"}
        description = {
            "Name": "bids_cnm coordinate network mapping",
            "BIDSVersion": "1.9.0",
            "DatasetType": "derivative",
            "GeneratedBy": [generated],
            "SourceDatasets": [{"URL": self.source_dataset.as_uri()}],
            # resolves the bids:connectome:... URIs of the sidecars' Sources
            "DatasetLinks": {"connectome": self.source_dataset.as_uri()},
        }
        return write_json(self.root / "dataset_description.json", description)

    def path(self, entities: Mapping[str, object], suffix: str, extension: str) -> Path:
        """Output path of a file (under ``sub-<label>/func`` when ``sub`` is given)."""
        folder = self.root
        if entities.get("sub"):
            folder = folder / f"sub-{entities['sub']}" / "func"
        return folder / bids_name(entities, suffix, extension)

    def sidecar(self, description: str, sources: list[str], **extra: object) -> dict:
        """The JSON sidecar content of a map."""
        content = {
            "Description": description,
            "Sources": sources,
            "SpatialReference": self.spatial_reference,
        }
        content.update(extra)
        content["bids_cnm"] = self.settings
        return content

    def write_map(
        self,
        entities: Mapping[str, object],
        data: np.ndarray,
        affine: np.ndarray,
        description: str,
        sources: list[str],
        suffix: str = "boldmap",
        **extra: object,
    ) -> Path:
        """Write a 3-D map and its sidecar; return the map's path."""
        path = self.path(entities, suffix, ".nii.gz")
        img = nb.Nifti1Image(np.asarray(data), affine)
        img.header.set_xyzt_units("mm")
        write_nifti(path, img)
        write_json(
            path.with_name(path.name.replace(".nii.gz", ".json")),
            self.sidecar(description, sources, **extra),
        )
        return path


def unmask(values: np.ndarray, voxels: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Put values of the listed voxels back on the 3-D grid (zeros elsewhere).

    Parameters
    ----------
    values : ndarray, shape (V,) or (V, K)
    voxels : ndarray of int64, shape (V,)
        Flat indices.
    shape : tuple
        3-D grid shape.

    Returns
    -------
    ndarray of float32, shape ``shape`` or ``shape + (K,)``
    """
    values = np.asarray(values)
    out = np.zeros((int(np.prod(shape)),) + values.shape[1:], dtype=np.float32)
    out[voxels] = values
    return out.reshape(tuple(shape) + values.shape[1:])
