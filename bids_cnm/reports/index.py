"""Index of a bids_cnm derivatives folder, by the entities of its file names.

The report is rendered only from what is on disk.  Rather than a full
:class:`bids.BIDSLayout` (seconds to build, and blind to entities that are not
registered in its config), the group-level folder is indexed here by splitting
file names into ``key-value`` entities, a suffix and an extension, exactly as
:func:`bids_cnm.io.derivatives.bids_name` composes them.  Entities that later
analyses add (``desc-tfce``, ``desc-logpFWE``, a new ``roi-<label>``...) are
indexed without any change here.

Participant folders (``sub-*``) are not indexed file by file (they can hold
thousands of maps); only their labels are listed.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["DerivFile", "DerivativesIndex", "parse_name", "threshold_value"]

_ENTITY = re.compile(r"^([a-zA-Z0-9]+)-([a-zA-Z0-9+]+)$")
_SKIP_DIRS = {"work", "logs", "log", "figures", "code", "sourcedata"}
#: how deep below the root subfolders are indexed (a work directory inside the
#: output folder would otherwise cost a walk over thousands of files)
MAX_DEPTH = 2


def parse_name(name: str) -> tuple[dict[str, str], str, str] | None:
    """Split a BIDS file name into entities, suffix and extension.

    Parameters
    ----------
    name : str
        e.g. ``space-MNI_set-primary_thresh-5p1_desc-overlap_boldmap.nii.gz``.

    Returns
    -------
    (entities, suffix, extension) or None
        ``None`` when a part before the suffix is not a ``key-value`` pair.
        ``seeds.tsv`` gives ``({}, "seeds", ".tsv")``.
    """
    stem, dot, rest = name.partition(".")
    extension = dot + rest
    parts = stem.split("_")
    entities: dict[str, str] = {}
    for part in parts[:-1]:
        match = _ENTITY.match(part)
        if not match:
            return None
        entities[match.group(1)] = match.group(2)
    return entities, parts[-1], extension


def threshold_value(label: str) -> float | None:
    """Invert :func:`bids_cnm.stats.overlap.threshold_label`: ``5p1`` -> 5.1."""
    try:
        return float(label.replace("p", ".").replace("m", "-"))
    except ValueError:
        return None


@dataclass(eq=False)
class DerivFile:
    """One indexed file."""

    path: Path
    entities: dict[str, str]
    suffix: str
    extension: str
    _sidecar: dict | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.path.name

    def get(self, entity: str, default: str | None = None) -> str | None:
        return self.entities.get(entity, default)

    @property
    def sidecar(self) -> dict:
        """The JSON sidecar next to the file (``{}`` when missing or unreadable)."""
        if self._sidecar is None:
            content: dict = {}
            if self.extension != ".json":
                json_path = self.path.with_name(self.path.name[: -len(self.extension)] + ".json")
                try:
                    loaded = json.loads(json_path.read_text())
                    content = loaded if isinstance(loaded, dict) else {}
                except (OSError, ValueError):
                    content = {}
            self._sidecar = content
        return self._sidecar

    def matches(self, pattern: str) -> bool:
        """``fnmatch`` on the file name; ``*_desc-x*`` also matches a name starting ``desc-x``."""
        return fnmatch.fnmatchcase("_" + self.name, pattern) or fnmatch.fnmatchcase(
            self.name, pattern
        )


class DerivativesIndex:
    """The group-level files of a derivatives folder.

    Parameters
    ----------
    root : Path
        The bids_cnm output directory.
    only : iterable of path, optional
        Index only these files (paths absolute or relative to ``root``), e.g. the
        files a run manifest lists; default every file found.
    """

    def __init__(self, root: Path, only: Iterable[str | Path] | None = None) -> None:
        self.root = Path(root)
        self.files: list[DerivFile] = []
        self.participants: list[str] = []
        self.only = None if only is None else {
            (self.root / p).resolve() if not Path(p).is_absolute() else Path(p).resolve()
            for p in only}
        self._only_stems = {p.with_name(p.name.split(".")[0]) for p in self.only or ()}
        for folder, dirs, names in os.walk(self.root):
            here = Path(folder)
            if here == self.root:
                self.participants = sorted(
                    d[4:] for d in dirs if d.startswith("sub-") and (here / d).is_dir()
                )
            depth = len(here.relative_to(self.root).parts)
            dirs[:] = [] if depth >= MAX_DEPTH else sorted(
                d for d in dirs
                if not d.startswith((".", "sub-")) and d not in _SKIP_DIRS
            )
            for name in sorted(names):
                if name.startswith(".") or name.endswith(".part"):
                    continue
                if self.only is not None and (here / name).resolve() not in self.only \
                        and not (name.endswith(".json") and (here / name.split(".")[0])
                                 .resolve() in self._only_stems):
                    continue  # a sidecar follows its file
                parsed = parse_name(name)
                if parsed is None:
                    continue
                entities, suffix, extension = parsed
                self.files.append(DerivFile(here / name, entities, suffix, extension))

    def get(
        self,
        suffix: str | None = None,
        extension: str | tuple[str, ...] | None = None,
        **entities: str | bool | None,
    ) -> list[DerivFile]:
        """Files matching all filters.

        Entity filters: a string must equal the label, ``None`` means the
        entity is absent, ``True`` that it is present.
        """
        if isinstance(extension, str):
            extension = (extension,)
        out = []
        for f in self.files:
            if suffix is not None and f.suffix != suffix:
                continue
            if extension is not None and f.extension not in extension:
                continue
            ok = True
            for key, want in entities.items():
                have = f.entities.get(key)
                if want is None:
                    ok = have is None
                elif want is True:
                    ok = have is not None
                else:
                    ok = have == want
                if not ok:
                    break
            if ok:
                out.append(f)
        return out

    def values(self, entity: str, files: list[DerivFile] | None = None) -> list[str]:
        """Distinct labels of an entity, in order of first appearance."""
        seen: dict[str, None] = {}
        for f in self.files if files is None else files:
            if entity in f.entities:
                seen.setdefault(f.entities[entity], None)
        return list(seen)

    def first(self, name: str) -> Path | None:
        """A top-level file by exact name (``seeds.tsv``, ``dataset_description.json``)."""
        path = self.root / name
        if self.only is not None and path.resolve() not in self.only \
                and not name.endswith(".json"):
            return None
        return path if path.is_file() else None
