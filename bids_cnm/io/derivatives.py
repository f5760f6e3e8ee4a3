"""Write BIDS derivatives: names, sidecars, dataset_description.json, atomic files.

Names follow BIDS with four entities BIDS does not define yet, registered in
the pybids config shipped with the package (``bids_cnm/data/bids_cnm_config.json``):
``seed-<id>``, ``stat-<r|z|t|...>``, ``set-<name>``, ``thresh-<T>`` (``5p1`` for
5.1), ``variant-<label>`` (sensitivity variants) and ``control-<set>``
(specificity comparisons).  See ``docs/outputs.md`` for the full scheme.

Group-level files go into one folder per analysis (:mod:`bids_cnm.io.layout`);
sidecars name their sources as BIDS URIs (``bids:connectome:sub-01/func/...``)
resolved by the ``DatasetLinks`` of ``dataset_description.json``.

Every file is written to a temporary name in its final folder and renamed into
place, so a crash never leaves a half-written output behind.
"""

from __future__ import annotations

import errno
import gzip
import json
import os
import re
import secrets
import tempfile
import zlib
from collections.abc import Callable, Mapping
from functools import lru_cache
from pathlib import Path

import nibabel as nb
import numpy as np
import pandas as pd

from bids_cnm import __version__
from bids_cnm.errors import OutputError
from bids_cnm.io.columns import column_sidecar
from bids_cnm.io.layout import LOGS_FOLDER, group_folder, write_bidsignore
from bids_cnm.io.nifti_bytes import encode_map

try:  # python-isal: the same DEFLATE format, several times faster than zlib
    from isal import igzip as _igzip
    from isal import isal_zlib as _isal_zlib
except ImportError:  # pragma: no cover - exercised only without isal installed
    _igzip = _isal_zlib = None

#: what inflating a damaged or foreign file raises
_INFLATE_ERRORS = (OSError, EOFError, zlib.error) + (
    (_isal_zlib.error,) if _isal_zlib is not None else ())

#: order of entities in file names (BIDS order, then ours)
ENTITY_ORDER = (
    "sub", "ses", "task", "run", "space", "res", "set", "control", "variant", "seed", "thresh",
    "stat", "desc",
)
CODE_URL = "https://github.com/bids-cnm/bids_cnm"
PYBIDS_CONFIG = Path(__file__).resolve().parent.parent / "data" / "bids_cnm_config.json"
#: settings that shape a connectivity or network map (recorded in its sidecar; the
#: whole configuration is in ``logs/bids_cnm.toml`` once)
MAP_SETTINGS = (
    "coordinates", "task", "space", "res", "bold_desc", "sphere_diameter", "seed_signal",
    "run_combination", "cache_dtype", "t_threshold",
)
#: significant digits of the floats in the TSVs: those of the float32 maps (about 7),
#: not the 17 of a float64 repr
TSV_FLOAT_FORMAT = "%.7g"


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


#: flags of a new temporary: never an existing file (nor through a symbolic link)
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)


def _create_temporary(path: Path, suffix: str) -> tuple[int, str]:
    """Create a hidden temporary beside ``path``: its descriptor and name.

    Mode 0o666 less the umask, the permissions open() gives a new file (mkstemp would
    make it private); the folder is created when missing.  One ``open`` in all: a run
    creates hundreds of these.
    """
    for _ in range(100):  # a name collision needs 8 equal random characters
        tmp = os.path.join(path.parent, f".{path.name}.{secrets.token_hex(4)}{suffix}")
        try:
            return os.open(tmp, _CREATE, 0o666), tmp
        except FileNotFoundError:
            path.parent.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(path))


#: the temporaries of :func:`_create_temporary` (8 random characters of [a-z0-9_];
#: older versions named them with mkstemp, also 8 of [a-z0-9_])
_TEMPORARY = re.compile(r"^\..+\.[a-z0-9_]{8}(\.part|\.nii\.gz|\.nii)$")

#: errors of the output's file system, not of the data
_NO_ROOM = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded"}


def _atomic_write(path: Path, write: Callable[[int, str], None]) -> None:
    """Write a temporary with ``write(fd, name)``, then rename it to ``path``.

    The descriptor is closed here; on any failure (an interruption too) the temporary
    is removed, and the errors of a full or read-only disk become an
    :class:`~bids_cnm.errors.OutputError` that names the fix.
    """
    try:
        fd, tmp = _create_temporary(path, ".part")
    except OSError as exc:
        raise _output_error(path, exc) from exc
    try:
        try:
            write(fd, tmp)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno in (*_NO_ROOM, errno.EROFS, errno.EACCES):
            raise _output_error(path, exc) from exc
        raise


def _atomic_write_bytes(path: Path, write: Callable[[str], object]) -> None:
    """Atomic write of a file that ``write(name)`` makes by its name (pandas, text)."""
    _atomic_write(path, lambda fd, tmp: write(tmp))


def _write_all(fd: int, content: bytes) -> None:
    """``os.write`` until every byte is written (a write may take only part)."""
    view = memoryview(content)
    while view:
        view = view[os.write(fd, view):]


def _output_error(path: Path, exc: OSError) -> OutputError:
    reason = _NO_ROOM.get(exc.errno, exc.strerror or str(exc))
    return OutputError(f"cannot write {path}: {reason}; make room or choose another folder, "
                       "then run the same command again (finished steps are reused).")


def sweep_temporaries(folder: Path, recursive: bool = True) -> list[Path]:
    """Remove the hidden temporaries a killed run left in ``folder``.

    Call only while holding the folder's exclusive lock (or on folders no other
    run writes): a running job's temporaries look the same.

    Returns
    -------
    list of Path
        The files removed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = folder.rglob(".*") if recursive else folder.glob(".*")
    removed = [p for p in found if p.is_file() and _TEMPORARY.match(p.name)]
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


def writable_folder(path: Path, role: str) -> Path:
    """Create ``path`` if needed and prove it writable (a probe file), up front.

    Raises
    ------
    OutputError
        Naming the folder, the reason and the fix (exit 73).
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".bids_cnm_probe.")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        what = "is a file, not a folder" if path.exists() and not path.is_dir() else (
            exc.strerror or str(exc))
        raise OutputError(
            f"cannot create {role} {path}: {_NO_ROOM.get(exc.errno, what)}; choose a "
            "writable folder."
        ) from exc
    return path


def write_json(path: Path, content: Mapping) -> Path:
    """Write JSON atomically (left untouched when the file already says the same)."""
    text = json.dumps(content, indent=2, sort_keys=False, default=_jsonable) + "\n"
    store_bytes(Path(path), text.encode("utf-8"))
    return Path(path)


def write_text(path: Path, text: str) -> Path:
    """Write a text file atomically (UTF-8); left untouched when it says the same already.

    (A participant job rewriting the shared ``.bidsignore`` with the same lines would
    make the group run's outputs look modified to its re-run check.)
    """
    store_bytes(Path(path), text.encode("utf-8"))
    return Path(path)


def write_tsv(path: Path, table: pd.DataFrame) -> Path:
    """Write a TSV atomically (``n/a`` for missing values, as BIDS asks; 7 significant digits)."""
    _atomic_write_bytes(
        Path(path),
        lambda tmp: table.to_csv(tmp, sep="\t", index=False, na_rep="n/a",
                                 float_format=TSV_FLOAT_FORMAT),
    )
    return Path(path)


#: gzip level of NIfTI outputs: level 1 of ISA-L deflates maps ~5x faster than zlib's
#: level 1 (nibabel's default) and about as small; higher levels gain a few percent
NIFTI_COMPRESSLEVEL = 1


def _gunzip(data: bytes) -> bytes:
    """Inflate gzip bytes (ISA-L when installed)."""
    return (_igzip or gzip).decompress(data)


def _gzip(raw: bytes) -> bytes:
    """gzip with ISA-L when installed (zlib otherwise); mtime 0: same data, same bytes."""
    if _igzip is not None:
        return _igzip.compress(raw, NIFTI_COMPRESSLEVEL, mtime=0)
    return gzip.compress(raw, NIFTI_COMPRESSLEVEL, mtime=0)


def store_bytes(path: Path, content: bytes, deflate: bool = False) -> None:
    """Write ``content`` at ``path`` atomically, unless the file holds it already.

    Parameters
    ----------
    path : Path
    content : bytes
        The file's bytes (before compression when ``deflate``).
    deflate : bool
        gzip ``content`` first (:func:`_gzip`); an existing gzip file is then kept
        when it inflates to ``content``, even if its compressed bytes differ.
    """
    raw = content
    if deflate:
        content = _gzip(content)
    if _same_content(path, content) or (deflate and _same_inflated(path, raw, len(content))):
        return
    _atomic_write(path, lambda fd, tmp: _write_all(fd, content))


def write_nifti(path: Path, img: nb.Nifti1Image) -> Path:
    """Write a NIfTI image atomically (under a hidden temporary name, then renamed).

    ``.nii.gz`` is deflated in memory at :data:`NIFTI_COMPRESSLEVEL`; a file that
    already holds this image (a re-run) is left untouched.
    """
    path = Path(path)
    store_bytes(path, img.to_bytes(), deflate=path.name.endswith(".nii.gz"))
    return path


def _same_content(path: Path, content: bytes) -> bool:
    """Whether ``path`` exists with exactly ``content`` (then it need not be rewritten)."""
    try:
        if path.stat().st_size != len(content):
            return False
        return path.read_bytes() == content
    except OSError:
        return False


def _same_inflated(path: Path, raw: bytes, size: int) -> bool:
    """Whether the gzip file ``path``, of ``size`` bytes, inflates to ``raw``.

    ISA-L's deflate is not always byte-reproducible (about one map in 400 of a run
    deflated again differs in a byte, the data identical), so a re-run that finds other
    compressed bytes compares the data before rewriting an unchanged map.  Only a file
    of the new bytes' size is inflated: a changed map (a run with other settings)
    almost always deflates to another size, and the varying byte kept the size in every
    case seen; a rare miss only rewrites a file.
    """
    try:
        if os.stat(path).st_size != size:
            return False
        with open(path, "rb") as f:
            return _gunzip(f.read()) == raw
    except _INFLATE_ERRORS:  # absent, unreadable or not gzip: rewrite it
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
    """Writes maps and tables with their sidecars into a BIDS derivatives folder.

    Parameters
    ----------
    root : Path
        The output directory (created when missing).
    source_dataset : Path
        The connectome (recorded in ``SourceDatasets`` and as ``DatasetLinks``
        ``connectome``).
    settings : dict
        The run's settings; a sidecar records those that shaped its file
        (:data:`MAP_SETTINGS` unless told otherwise).
    spatial_reference : str
        Template name of the grid (e.g. ``MNI152NLin2009cAsym``).
    links : dict, optional
        More named input folders (``coordinates``, ``plan``, ``compare``...):
        sources inside them are written ``bids:<name>:<relative path>``.
    """

    def __init__(
        self,
        root: Path,
        source_dataset: Path,
        settings: Mapping,
        spatial_reference: str,
        links: Mapping[str, object] | None = None,
    ) -> None:
        self.root = Path(root)
        self.source_dataset = Path(source_dataset)
        self.settings = dict(settings)
        self.spatial_reference = spatial_reference
        self.links = {"connectome": self.source_dataset}
        self.links.update({k: Path(v) for k, v in (links or {}).items() if v})
        # uri() of a path, by (path, working folder): every sidecar names the coordinate
        # table, and resolving it against the linked folders costs ~1 ms each time
        self._uris: dict[tuple[str, str], str] = {}
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create OUTPUT_DIR {self.root}: {exc}") from exc

    def write_dataset_description(self) -> Path:
        """Write ``dataset_description.json`` (DatasetType derivative) and ``.bidsignore``."""
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
            # resolves the bids:<name>:... URIs of the sidecars' Sources
            "DatasetLinks": {name: path.as_uri() for name, path in self.links.items()},
        }
        write_bidsignore(self.root)
        return write_json(self.root / "dataset_description.json", description)

    def uri(self, source: object) -> str:
        """A source file as a BIDS URI relative to a linked dataset (never absolute).

        ``bids::<path>`` for a file of these derivatives; a file outside every
        linked folder is named by its file name only.
        """
        text = str(source)
        if text.startswith("bids:"):
            return text
        # a relative path depends on the working folder; an absolute one does not (and
        # getcwd() for every source of every sidecar costs more than the rest of it)
        key = (text, "" if os.path.isabs(text) else os.getcwd())
        if key not in self._uris:
            self._uris[key] = self._resolve_uri(Path(text).absolute())
        return self._uris[key]

    def _resolve_uri(self, path: Path) -> str:
        """:meth:`uri` of an absolute path."""
        candidates = [("", self.root), *self.links.items()]
        # the deepest folder wins (the plan folder may sit inside the coordinates' one)
        for name, folder in sorted(candidates, key=lambda c: -len(Path(c[1]).parts)):
            try:
                return f"bids:{name}:{path.relative_to(Path(folder).absolute()).as_posix()}"
            except ValueError:
                continue
        return path.name

    def path(
        self,
        entities: Mapping[str, object],
        suffix: str,
        extension: str,
        folder: str | None = None,
    ) -> Path:
        """Output path of a file: ``sub-<label>/func`` when ``sub`` is given, else the
        analysis folder (``folder``, or :func:`~bids_cnm.io.layout.group_folder`)."""
        where = self.root
        if entities.get("sub"):
            where = where / f"sub-{entities['sub']}" / "func"
        else:
            folder = folder if folder is not None else group_folder(entities, suffix)
            if folder:
                where = where / folder
        return where / bids_name(entities, suffix, extension)

    def logs_path(self, name: str) -> Path:
        """A file of the run's record (``logs/``: configuration, boilerplate, plan)."""
        return self.root / LOGS_FOLDER / name

    def sidecar(
        self,
        description: str,
        sources: list,
        settings: tuple[str, ...] | None = MAP_SETTINGS,
        **extra: object,
    ) -> dict:
        """The JSON sidecar content of a map or table.

        Parameters
        ----------
        description : str
        sources : list
            Paths or BIDS URIs of the inputs (written as BIDS URIs).
        settings : tuple of str or None
            Names of the run's settings that shaped the file (``None``: none).
        **extra
            More keys (BIDS keys in CamelCase).
        """
        content = {
            "Description": description,
            "Sources": [self.uri(s) for s in sources],
            "SpatialReference": self.spatial_reference,
        }
        content.update(extra)
        shaping = {k: self.settings[k] for k in settings or () if k in self.settings}
        if isinstance(shaping.get("coordinates"), str):
            shaping["coordinates"] = self.uri(shaping["coordinates"])
        if shaping:
            content["bids_cnm"] = shaping
        return content

    @staticmethod
    def _resolution(entities: Mapping[str, object], affine: np.ndarray | None) -> dict:
        """BIDS requires ``Resolution`` in the sidecar of a file with a ``res`` entity."""
        if entities.get("res") in (None, ""):
            return {}
        grid = None if affine is None else np.asarray(affine, dtype=np.float64).tobytes()
        return {"Resolution": _resolution_text(str(entities["res"]), grid)}

    def write_map(
        self,
        entities: Mapping[str, object],
        data: np.ndarray,
        affine: np.ndarray,
        description: str,
        sources: list,
        suffix: str = "boldmap",
        folder: str | None = None,
        **extra: object,
    ) -> Path:
        """Write a 3-D map and its sidecar; return the map's path."""
        path = self.path(entities, suffix, ".nii.gz", folder)
        # the bytes nibabel would write (spatial units mm), with the header made once
        store_bytes(path, encode_map(np.asarray(data), affine), deflate=True)
        extra = {**self._resolution(entities, affine), **extra}
        write_json(path.with_name(path.name.replace(".nii.gz", ".json")),
                   self.sidecar(description, sources, **extra))
        return path

    def write_table(
        self,
        entities: Mapping[str, object],
        suffix: str,
        table: pd.DataFrame,
        description: str,
        sources: list,
        columns: Mapping[str, str] | None = None,
        fallback: Callable[[str], str] | None = None,
        folder: str | None = None,
        **extra: object,
    ) -> Path:
        """Write a TSV and its sidecar describing every column; return the TSV's path.

        ``columns`` and ``fallback`` are passed to :func:`bids_cnm.io.columns.column_sidecar`.
        """
        path = self.path(entities, suffix, ".tsv", folder)
        return self.write_tsv_with_sidecar(
            path, table, description, sources, columns, fallback,
            **{**self._resolution(entities, None), **extra},
        )

    def write_tsv_with_sidecar(
        self,
        path: Path,
        table: pd.DataFrame,
        description: str,
        sources: list,
        columns: Mapping[str, str] | None = None,
        fallback: Callable[[str], str] | None = None,
        **extra: object,
    ) -> Path:
        """Write ``table`` at ``path`` with a sidecar: description, sources, columns."""
        write_tsv(path, table)
        extra.setdefault("settings", MAP_SETTINGS)
        sidecar = self.sidecar(description, sources, **extra)
        if "space-" not in path.name:  # a table of no grid (seeds.tsv)
            sidecar.pop("SpatialReference", None)
        sidecar.update(column_sidecar(table.columns, columns, fallback))
        write_json(path.with_name(path.name[: -len(".tsv")] + ".json"), sidecar)
        return path


@lru_cache(maxsize=16)
def _resolution_text(res: str, affine: bytes | None) -> str:
    """The ``Resolution`` of a sidecar (the same for every map of a grid: remembered)."""
    text = f"res-{res}: the grid of the connectome's BOLD runs"
    if affine is not None:
        matrix = np.frombuffer(affine, dtype=np.float64).reshape(4, 4)
        zooms = np.sqrt((matrix[:3, :3] ** 2).sum(axis=0))
        text += f" ({' x '.join(f'{z:g}' for z in np.round(zooms, 3))} mm voxels)"
    return text


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
