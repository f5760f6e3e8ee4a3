"""One immutable settings object for a bids_cnm run.

The command line builds a :class:`Config`; everything downstream reads it and
nothing changes it.  :meth:`Config.science_hash` digests the settings that
change the numbers (not paths, not the number of processes), so outputs made
with equal settings can be recognized and reused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

#: fMRIPrep writes ``desc-preproc_bold``, XCP-D ``desc-denoised_bold``.
DEFAULT_BOLD_DESC: tuple[str, ...] = ("preproc", "denoised")

#: Settings that do not change any number in the outputs.
_NON_SCIENCE_FIELDS = frozenset(
    {
        "bids_dir",
        "output_dir",
        "work_dir",
        "analysis_level",
        "nprocs",
        "verbosity",
        "batch_size",
        "participant_label",
        "participant_filter",
        "nipype_plugin",
        "plugin_config",
        "mem_gb",
        "write_participant_maps",
        "overwrite",
        "min_volumes",
    }
)


@dataclass(frozen=True)
class Config:
    """Settings of one run.

    Parameters
    ----------
    bids_dir : Path
        The connectome: a BIDS derivatives dataset of preprocessed BOLD.
    output_dir : Path
        Where the derivatives are written.
    analysis_level : {'participant', 'group'}
        The BIDS-App analysis level.
    coordinates : Path
        The coordinate table (TSV, Sleuth text or NiMARE JSON).
    work_dir : Path
        The nipype working directory (caches, resumable state).
    participant_label : tuple of str
        Subject labels without the ``sub-`` prefix; empty means all.
    participant_filter : tuple of (str, str)
        ``(column, value)`` pairs selecting rows of ``participants.tsv``.
    sphere_diameter : float
        Seed sphere diameter in mm (6 in the reference study).
    t_threshold : float
        |t| threshold that binarizes each seed network (5.1 in the reference study).
    task, space, res : str or None
        BIDS entities that select the connectome's BOLD runs; ``None`` accepts
        the only value present (and is an error when several are present).
    bold_desc : tuple of str
        Accepted ``desc`` values of the BOLD files.
    cache_dtype : {'int16', 'float32'}
        Storage of the prepared (masked, standardized) time series in the work
        directory.  ``float32`` (default) is exact; ``int16`` with one scale per
        voxel halves the bytes read, with r within 1e-5 and t within 0.1%.
    batch_size : int
        Maximum number of subjects accumulated by one group-level job.
    nprocs : int
        Processes for nipype's MultiProc plugin.
    write_participant_maps : bool
        Whether the participant level writes per-subject z-maps.
    t_thresholds : tuple of float
        Further |t| thresholds (sensitivity): overlap maps from the same t-maps.
    sphere_diameters : tuple of float
        Further sphere diameters (sensitivity): extra seeds in the same pass.
    per_coordinate : bool
        Also one seed per coordinate (sensitivity), in the same pass.
    subgroups : tuple of str
        Coordinate-table columns whose levels give subgroup and leave-one-level-out
        networks.
    primary_sets : tuple of str
        Coordinate sets that are the disease's studies (the others are controls).
    specificity : bool
        Run the permutation tests of primary vs control networks.
    control_sets : tuple of str or None
        Sets compared with the primary ones (default: all other coordinate sets),
        plus ``random`` when ``random_relocations`` > 0.
    random_relocations : int
        Randomly relocated copies of every primary study (control networks).
    n_permutations : int
        Label permutations of the specificity tests.
    specificity_maps : {'t', 'binarized', 'liebermeister'}
        What the specificity test compares.
    tfce : bool
        Threshold-free cluster enhancement in the specificity test.
    random_seed : int
        Seed of every random draw (relocations, permutations).
    analysis_plan : Path or None
        Validation / DBS / ALE plan file (JSON or YAML).
    compare_connectome : Path or None
        A second connectome on which the main network is computed too.
    compare_participant_filter : tuple of (str, str)
        Cohort of the second pass (on ``compare_connectome`` or on BIDS_DIR).
    compare_label : str or None
        Name of the second pass in file names.
    overwrite : bool
        When OUTPUT_DIR holds outputs of another connectome or other settings,
        remove the files that run recorded instead of refusing.
    min_volumes : int
        Subjects with fewer BOLD volumes (all runs together) are listed in a warning.
    """

    bids_dir: Path
    output_dir: Path
    analysis_level: str
    coordinates: Path | None = None
    work_dir: Path = Path("work")
    participant_label: tuple[str, ...] = ()
    participant_filter: tuple[tuple[str, str], ...] = ()
    sphere_diameter: float = 6.0
    t_threshold: float = 5.1
    task: str | None = None
    space: str | None = None
    res: str | None = None
    bold_desc: tuple[str, ...] = DEFAULT_BOLD_DESC
    cache_dtype: str = "float32"
    batch_size: int = 100
    nprocs: int = 1
    mem_gb: float | None = None
    nipype_plugin: str = "MultiProc"
    plugin_config: Path | None = None
    verbosity: int = 0
    write_participant_maps: bool = True
    t_thresholds: tuple[float, ...] = ()
    sphere_diameters: tuple[float, ...] = ()
    per_coordinate: bool = False
    subgroups: tuple[str, ...] = ()
    primary_sets: tuple[str, ...] = ("primary",)
    specificity: bool = False
    control_sets: tuple[str, ...] | None = None
    random_relocations: int = 4
    n_permutations: int = 5000
    specificity_maps: str = "t"
    tfce: bool = True
    random_seed: int = 0
    analysis_plan: Path | None = None
    compare_connectome: Path | None = None
    compare_participant_filter: tuple[tuple[str, str], ...] = ()
    compare_label: str | None = None
    overwrite: bool = False
    min_volumes: int = 50
    extra: dict = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict:
        """Return the settings as JSON-serializable values."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Path):
                value = str(value)
            elif isinstance(value, tuple):
                value = [list(v) if isinstance(v, tuple) else v for v in value]
            out[f.name] = value
        return out

    def science_settings(self) -> dict:
        """Return the settings that change the numbers of the outputs."""
        settings = {
            k: v for k, v in self.to_dict().items() if k not in _NON_SCIENCE_FIELDS
        }
        # the coordinates' content matters, not their path
        settings.pop("coordinates", None)
        settings.pop("extra", None)
        return settings

    def science_hash(self) -> str:
        """Short digest of :meth:`science_settings` (12 hex digits)."""
        blob = json.dumps(self.science_settings(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]
