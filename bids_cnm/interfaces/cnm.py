"""Thin nipype interfaces around the pure functions of bids_cnm.

Each interface reads its inputs, calls one function of the science modules and
writes its result into the node's working directory (or, for the output
writers, into OUTPUT_DIR atomically).  Progress of the long steps is logged on
the ``bids_cnm`` logger.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import nibabel as nb
import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    Directory,
    File,
    InputMultiObject,
    OutputMultiObject,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)
from threadpoolctl import threadpool_limits

from bids_cnm.config import DOCS
from bids_cnm.engine import connectivity
from bids_cnm.engine.bold_reader import Scratch
from bids_cnm.engine.degree import DegreeSums
from bids_cnm.engine.group_results import GroupResults
from bids_cnm.engine.nodes import load_nodes, node_zvalues
from bids_cnm.engine.seeds import load_seeds
from bids_cnm.engine.timeseries import (
    FORMAT_VERSION,
    cache_key,
    is_prepared,
    open_prepared,
    prepare_subject,
    prepared_voxels,
    stream_subject,
    valid_mask,
)
from bids_cnm.io import outputs
from bids_cnm.io.derivatives import DerivativesWriter

if TYPE_CHECKING:
    from bids_cnm.plan import Plan

LOGGER = logging.getLogger("bids_cnm")


class _CNMInputSpec(BaseInterfaceInputSpec):
    """Inputs every step of bids_cnm has."""

    # nipype reuses a cached step when its inputs hash the same: with the code among
    # them, a step cached by another bids_cnm (an upgrade, an edited install) runs again
    code = traits.Str(desc="identity of the bids_cnm code running the step "
                           "(bids_cnm.io.code_identity; set by the workflow builders)")


def _writer(args: dict) -> DerivativesWriter:
    return DerivativesWriter(
        Path(args["output_dir"]),
        Path(args["bids_dir"]),
        args["settings"],
        args["space"],
        links=args.get("links"),
    )


class _PrepareInputSpec(_CNMInputSpec):
    subjects = traits.List(traits.Dict, mandatory=True,
                           desc="subjects to prepare: dicts of label, bold (list), masks (list)")
    cache_dir = traits.Str(mandatory=True, desc="folder of the prepared subjects (work dir)")
    dtype = traits.Enum("float32", "int16", usedefault=True, desc=DOCS["cache_dtype"])
    store_data = traits.Bool(True, usedefault=True,
                             desc="False (--no-cache): record the valid voxels only")
    # part of nipype's input hash: a cached node of an older cache layout reruns
    format_version = traits.Int(FORMAT_VERSION, usedefault=True,
                                desc="layout version of the prepared data")


class _PrepareOutputSpec(TraitedSpec):
    prepared = OutputMultiObject(Directory(exists=True), desc="prepared time series")


class PrepareTimeseries(SimpleInterface):
    """Decode, mask, standardize and store a batch of subjects' runs.

    Each subject goes to a folder of ``cache_dir`` named by :func:`cache_key` (its
    sources' paths, sizes and times, and the layout), checked here rather than by
    nipype: a warm run costs a ``stat`` per file, the folder is shared by every
    run, level and pass that reads the same files, and a killed run keeps every
    subject finished before the kill.  The node always runs (the check is cheap).
    """

    input_spec = _PrepareInputSpec
    output_spec = _PrepareOutputSpec
    always_run = True

    def _run_interface(self, runtime):
        cache = Path(self.inputs.cache_dir)
        prepared, made, start = [], 0, time.perf_counter()
        scratch = Scratch()  # the batch's subjects decode into the same memory
        for subject in self.inputs.subjects:
            bold, masks = list(subject["bold"]), list(subject.get("masks", []))
            out = cache / cache_key(bold, masks, self.inputs.dtype, self.inputs.store_data)
            if not is_prepared(out):
                began = time.perf_counter()
                prepare_subject(bold, masks, out, dtype=self.inputs.dtype,
                                store_data=self.inputs.store_data, scratch=scratch)
                made += 1
                LOGGER.info("prepared sub-%s (%d run(s)) in %.1f s", subject["label"],
                            len(bold), time.perf_counter() - began)
            prepared.append(str(out))
        if made < len(prepared):
            LOGGER.debug("%d of %d subjects already prepared (%.2f s)", len(prepared) - made,
                         len(prepared), time.perf_counter() - start)
        self._results["prepared"] = prepared
        return runtime


class _AnalysisMaskInputSpec(_CNMInputSpec):
    prepared = InputMultiObject(Directory(exists=True), xor=["masks"])
    masks = InputMultiObject(File(exists=True), xor=["prepared"],
                             desc="participant-level valid-voxel masks")
    support = File(exists=True, desc="voxels allowed by the brain masks (NIfTI)")


class _AnalysisMaskOutputSpec(TraitedSpec):
    voxels = File(exists=True, desc="flat indices of the analysis mask (.npy)")
    mask = File(exists=True, desc="analysis mask (NIfTI)")


class AnalysisMask(SimpleInterface):
    """Intersect the subjects' valid voxels (and the brain masks' support)."""

    input_spec = _AnalysisMaskInputSpec
    output_spec = _AnalysisMaskOutputSpec

    def _run_interface(self, runtime):
        if self.inputs.prepared:
            def voxel_mask(path):  # the voxel list only: the data are not opened
                voxels, meta = prepared_voxels(path)
                mask = np.zeros(int(np.prod(meta["shape"])), dtype=bool)
                mask[voxels] = True
                return mask.reshape(meta["shape"])

            masks = (voxel_mask(p) for p in self.inputs.prepared)
            affine = np.asarray(prepared_voxels(self.inputs.prepared[0])[1]["affine"])
        else:
            masks = (np.asarray(nb.load(p).dataobj) > 0 for p in self.inputs.masks)
            affine = nb.load(self.inputs.masks[0]).affine
        mask = next(masks)
        for other in masks:
            mask &= other
        if self.inputs.support:
            mask &= np.asarray(nb.load(self.inputs.support).dataobj) > 0
        voxels = np.flatnonzero(mask.ravel()).astype(np.int64)
        if len(voxels) == 0:
            raise ValueError("the subjects' valid voxels do not overlap: empty analysis mask")
        np.save(Path(runtime.cwd) / "voxels.npy", voxels)
        out = Path(runtime.cwd) / "analysis_mask.nii.gz"
        nb.Nifti1Image(mask.astype(np.uint8), affine).to_filename(out)
        LOGGER.info("analysis mask: %d voxels", len(voxels))
        self._results["voxels"] = str(Path(runtime.cwd) / "voxels.npy")
        self._results["mask"] = str(out)
        return runtime


class _BatchInputSpec(_CNMInputSpec):
    """What every batch of the connectivity pass takes, however its subjects are read."""

    seeds = File(exists=True, mandatory=True, desc="seeds (.npz)")
    batch = traits.Str("batch", usedefault=True, desc="name used in progress messages")
    nodes = File(exists=True, desc="ROI-to-ROI nodes (.npz from save_nodes)")
    n_threads = traits.Int(0, usedefault=True,
                           desc="threads of this job (0: all); parallel jobs share the cores")
    degree_sample = File(exists=True, desc="degree-check sample voxels (.npy; flat indices)")
    seed_signal = traits.Enum(*connectivity.SEED_SIGNALS, usedefault=True,
                              desc=DOCS["seed_signal"])
    run_combination = traits.Enum(*connectivity.RUN_COMBINATIONS, usedefault=True,
                                  desc=DOCS["run_combination"])


class _AccumulateInputSpec(_BatchInputSpec):
    prepared = InputMultiObject(Directory(exists=True), mandatory=True)
    voxels = File(exists=True, mandatory=True, desc="analysis mask voxels (.npy)")


class _AccumulateOutputSpec(TraitedSpec):
    stats = File(exists=True, desc="running sums (.npy; the subject count in the .json beside it)")
    node_values = File(desc="per-subject node values (.npy; only with nodes)")
    degree = File(desc="degree sums (.npz; only with degree_sample)")


class AccumulateConnectivity(SimpleInterface):
    """Stream a batch of subjects into running moments of r and z for all seeds."""

    input_spec = _AccumulateInputSpec
    output_spec = _AccumulateOutputSpec

    def _run_interface(self, runtime):
        seeds = load_seeds(self.inputs.seeds)
        voxels = np.load(self.inputs.voxels)
        stats = connectivity.RunningStats.zeros(len(voxels), len(seeds))
        nodes = load_nodes(self.inputs.nodes)[0] if self.inputs.nodes else None
        values = []
        degree = (DegreeSums.zeros(voxels, np.load(self.inputs.degree_sample))
                  if self.inputs.degree_sample else None)
        n = len(self.inputs.prepared)
        start = time.perf_counter()
        # the engine runs as many workers as BLAS may use threads
        with threadpool_limits(self.inputs.n_threads or None):
            for i, path in enumerate(self.inputs.prepared, 1):
                subject = open_prepared(path)
                rows = connectivity.rows_of(subject.voxels, voxels)
                options = (self.inputs.seed_signal, self.inputs.run_combination)
                connectivity.accumulate_subject(stats, subject, seeds, rows, *options)
                if nodes is not None:
                    values.append(node_zvalues(subject, seeds, nodes, *options))
                if degree is not None:  # the same subject, still in the page cache
                    # its share depends on the connectome, not the seeds: saved with the
                    # prepared copy, later runs read it instead of the S-seed product
                    degree.add(subject, rows, self.inputs.run_combination, keep=True)
                elapsed = time.perf_counter() - start
                LOGGER.info(
                    "%s: subject %d/%d, %.2f s/subject, about %.0f s left",
                    self.inputs.batch, i, n, elapsed / i, elapsed / i * (n - i),
                )
        out = Path(runtime.cwd) / "stats.npy"
        stats.save(out)
        self._results["stats"] = str(out)
        if nodes is not None:
            np.save(Path(runtime.cwd) / "node_values.npy", np.stack(values))
            self._results["node_values"] = str(Path(runtime.cwd) / "node_values.npy")
        if degree is not None:
            self._results["degree"] = str(degree.save(Path(runtime.cwd) / "degree.npz"))
        return runtime


class _StreamInputSpec(_BatchInputSpec):
    subjects = traits.List(traits.Dict, mandatory=True,
                           desc="subjects: dicts of label, bold (list), masks (list)")
    support = File(exists=True, desc="voxels allowed by the brain masks (NIfTI)")
    dtype = traits.Enum("float32", "int16", usedefault=True, desc=DOCS["cache_dtype"])


class _StreamOutputSpec(_AccumulateOutputSpec):
    voxels = File(exists=True, desc="voxels of the sums: valid in every subject (.npy)")
    valid_mask = File(exists=True, desc="the same voxels as a mask (NIfTI)")


class StreamConnectivity(SimpleInterface):
    """``--no-cache``: decode a batch of subjects once each, straight into running moments.

    The sums cover the voxels valid in every subject of the batch; the reduce step
    keeps those of the analysis mask (see :mod:`bids_cnm.engine.streaming`).
    """

    input_spec = _StreamInputSpec
    output_spec = _StreamOutputSpec

    def _run_interface(self, runtime):
        from bids_cnm.engine.streaming import stream_batch

        subjects = list(self.inputs.subjects)
        grid = nb.load(subjects[0]["bold"][0])  # the header only
        support = (np.asarray(nb.load(self.inputs.support).dataobj) > 0
                   if self.inputs.support else None)
        start = time.perf_counter()

        def progress(i: int, n: int) -> None:
            elapsed = time.perf_counter() - start
            LOGGER.info("%s: subject %d/%d read and correlated, %.2f s/subject, about %.0f s "
                        "left", self.inputs.batch, i, n, elapsed / i, elapsed / i * (n - i))

        with threadpool_limits(self.inputs.n_threads or None):
            sums = stream_batch(
                [(s["bold"], s.get("masks", [])) for s in subjects], load_seeds(self.inputs.seeds),
                support=support, signal=self.inputs.seed_signal,
                runs=self.inputs.run_combination, dtype=self.inputs.dtype,
                nodes=load_nodes(self.inputs.nodes)[0] if self.inputs.nodes else None,
                degree_sample=(np.load(self.inputs.degree_sample)
                               if self.inputs.degree_sample else None),
                progress=progress,
            )
        cwd = Path(runtime.cwd)
        self._results["stats"] = str(sums.stats.save(cwd / "stats.npy"))
        np.save(cwd / "voxels.npy", sums.voxels)
        self._results["voxels"] = str(cwd / "voxels.npy")
        mask = np.zeros(int(np.prod(grid.shape[:3])), dtype=np.uint8)
        mask[sums.voxels] = 1
        nb.Nifti1Image(mask.reshape(grid.shape[:3]), grid.affine).to_filename(
            cwd / "valid_mask.nii.gz")
        self._results["valid_mask"] = str(cwd / "valid_mask.nii.gz")
        if sums.node_values is not None:
            np.save(cwd / "node_values.npy", sums.node_values)
            self._results["node_values"] = str(cwd / "node_values.npy")
        if sums.degree is not None:
            self._results["degree"] = str(sums.degree.save(cwd / "degree.npz"))
        return runtime


class _FromMapsInputSpec(_CNMInputSpec):
    zmaps = InputMultiObject(File(exists=True), mandatory=True,
                             desc="participant z-maps, subject-major, seeds in seeds order")
    n_seeds = traits.Int(mandatory=True)
    voxels = File(exists=True, mandatory=True, desc="analysis mask voxels (.npy)")
    nodes = File(exists=True, desc="ROI-to-ROI nodes (.npz from save_nodes)")


class AccumulateFromMaps(SimpleInterface):
    """Running sums from participant-level z-maps already on disk."""

    input_spec = _FromMapsInputSpec
    output_spec = _AccumulateOutputSpec

    def _run_interface(self, runtime):
        voxels = np.load(self.inputs.voxels)
        k = self.inputs.n_seeds
        files = list(self.inputs.zmaps)
        stats = connectivity.RunningStats.zeros(len(voxels), k)
        nodes = load_nodes(self.inputs.nodes)[0] if self.inputs.nodes else None
        values = []
        for s in range(len(files) // k):
            z = np.empty((len(voxels), k), dtype=np.float32)
            node_z = np.full((k, len(nodes or [])), np.nan, dtype=np.float32)
            for j in range(k):
                volume = np.asarray(nb.load(files[s * k + j]).dataobj).ravel()
                z[:, j] = volume[voxels]
                for n, node in enumerate(nodes or []):
                    inside = volume[node]
                    inside = inside[inside != 0]  # zero: no data in this subject
                    if len(inside):
                        node_z[j, n] = inside.mean()
            values.append(node_z)
            r = np.tanh(z)
            stats.add_block(slice(None), r, z)
            stats.n += 1
            LOGGER.info("read participant maps of subject %d/%d", s + 1, len(files) // k)
        out = Path(runtime.cwd) / "stats.npy"
        stats.save(out)
        self._results["stats"] = str(out)
        if nodes is not None:
            np.save(Path(runtime.cwd) / "node_values.npy", np.stack(values))
            self._results["node_values"] = str(Path(runtime.cwd) / "node_values.npy")
        return runtime


class _ReduceInputSpec(_CNMInputSpec):
    stats = InputMultiObject(File(exists=True), mandatory=True)
    seeds = File(exists=True, mandatory=True)
    voxels = File(exists=True, mandatory=True)
    node_values = InputMultiObject(File(exists=True), desc="per-batch node values (.npy)")
    nodes = File(exists=True, desc="ROI-to-ROI nodes (.npz)")
    subjects = traits.List(traits.Str, desc="subject labels in batch order")
    stats_voxels = InputMultiObject(
        File(exists=True), desc="voxels of each batch's sums (.npy), when they differ from "
        "the analysis mask's (--no-cache): each batch is cut to the mask before merging")


class _ReduceOutputSpec(TraitedSpec):
    results = File(exists=True, desc="GroupResults (.npz)")


class ReduceConnectivity(SimpleInterface):
    """Merge the batches' running moments into mean r, mean z and t of every seed."""

    input_spec = _ReduceInputSpec
    output_spec = _ReduceOutputSpec

    def _run_interface(self, runtime):
        voxels = np.load(self.inputs.voxels)
        cover = list(self.inputs.stats_voxels or [None] * len(self.inputs.stats))
        batches = [connectivity.RunningStats.load(path) for path in self.inputs.stats]
        # --no-cache batches hold the voxels valid in their subjects: their rows of the mask
        rows = [None if c is None else connectivity.rows_of(np.load(c), voxels) for c in cover]
        n_subjects, final = connectivity.merge_and_finalize(batches, rows, np.float32)
        if final["undefined"].any():
            LOGGER.info("group level: t undefined (z equal in every subject) at %d voxel(s) "
                        "of %d seed(s); NaN in the t-maps", int(final["undefined"].sum()),
                        int(final["undefined"].any(axis=0).sum()))
        results = GroupResults(
            seeds=load_seeds(self.inputs.seeds),
            voxels=voxels,
            r=final["r"],
            z=final["z"],
            t=final["t"],
            n_subjects=n_subjects,
            subjects=list(self.inputs.subjects),
        )
        if self.inputs.nodes and self.inputs.node_values:
            results.node_values = np.concatenate([np.load(p) for p in self.inputs.node_values])
            results.node_table = load_nodes(self.inputs.nodes)[1]
        out = results.save(Path(runtime.cwd) / "results.npz", self.inputs.seeds)
        LOGGER.info("group level: t-maps of %d seeds over %d subjects", len(results.seeds),
                    n_subjects)
        self._results["results"] = str(out)
        return runtime


class _GroupOutputsInputSpec(_CNMInputSpec):
    results = File(exists=True, mandatory=True)
    mask = File(exists=True, mandatory=True)
    writer = traits.Dict(mandatory=True, desc="DerivativesWriter arguments")
    entities = traits.Dict(mandatory=True)
    threshold = traits.Float(mandatory=True, desc="main |t| threshold")
    thresholds = traits.List(traits.Float, desc="other |t| thresholds")
    primary_sets = traits.List(traits.Str, value=["primary"], usedefault=True)
    subgroups = traits.List(traits.Str, desc="seed metadata columns defining subgroups")
    sources = traits.List(traits.Str)


class _FilesOutputSpec(TraitedSpec):
    out_files = OutputMultiObject(File(exists=True))


class GroupOutputs(SimpleInterface):
    """Write the seeds, the seed maps, and every overlap network and sensitivity table."""

    input_spec = _GroupOutputsInputSpec
    output_spec = _FilesOutputSpec

    def _run_interface(self, runtime):
        results = GroupResults.load(self.inputs.results)
        writer = _writer(self.inputs.writer)
        writer.write_dataset_description()
        entities = dict(self.inputs.entities)
        sources = list(self.inputs.sources)
        files = outputs.write_seeds(writer, results.seeds, entities)
        mask_img = nb.load(self.inputs.mask)
        files.append(
            writer.write_map(
                {k: v for k, v in dict(entities, desc="analysis").items() if k != "task"},
                np.asarray(mask_img.dataobj).astype(np.uint8),
                mask_img.affine,
                "Analysis mask: voxels with valid data in every connectome subject.",
                sources,
                suffix="mask",
            )
        )
        files += outputs.write_seed_maps(writer, results, entities, sources)
        files += outputs.write_networks(
            writer, results, entities, self.inputs.threshold, self.inputs.thresholds,
            self.inputs.primary_sets, self.inputs.subgroups, sources,
        )
        LOGGER.info("group level: wrote %d files to %s", len(files), writer.root)
        self._results["out_files"] = [str(f) for f in files]
        return runtime


class _SpecificityInputSpec(_CNMInputSpec):
    results = File(exists=True, mandatory=True)
    primary_set = traits.Str(mandatory=True)
    control_set = traits.Str(mandatory=True)
    n_permutations = traits.Int(5000, usedefault=True, desc=DOCS["n_permutations"])
    tfce = traits.Bool(True, usedefault=True, desc="threshold-free cluster enhancement")
    maps = traits.Enum("t", "binarized", "liebermeister", usedefault=True,
                       desc=DOCS["specificity_maps"])
    threshold = traits.Float(5.1, usedefault=True, desc=DOCS["t_threshold"])
    random_seed = traits.Int(0, usedefault=True, desc=DOCS["random_seed"])
    writer = traits.Dict(mandatory=True)
    entities = traits.Dict(mandatory=True)


class Specificity(SimpleInterface):
    """Permutation test of a primary set's networks against one control group."""

    input_spec = _SpecificityInputSpec
    output_spec = _FilesOutputSpec

    def _run_interface(self, runtime):
        from bids_cnm.analyses.specificity import compare_networks

        results = GroupResults.load(self.inputs.results)
        result = compare_networks(
            results, self.inputs.primary_set, self.inputs.control_set,
            n_permutations=self.inputs.n_permutations, tfce=self.inputs.tfce,
            maps=self.inputs.maps, threshold=self.inputs.threshold,
            random_state=self.inputs.random_seed,
        )
        files = outputs.write_specificity(
            _writer(self.inputs.writer), results, result, dict(self.inputs.entities),
            self.inputs.primary_set,
            settings={"Method": result.method, "NumberOfPermutations": result.n_permutations,
                      "Maps": self.inputs.maps, "RandomSeed": self.inputs.random_seed,
                      "Threshold": self.inputs.threshold},
        )
        self._results["out_files"] = [str(f) for f in files]
        return runtime


class _CompareInputSpec(_CNMInputSpec):
    results = File(exists=True, mandatory=True)
    compare_results = File(exists=True, mandatory=True)
    label = traits.Str(mandatory=True)
    writer = traits.Dict(mandatory=True)
    entities = traits.Dict(mandatory=True)
    threshold = traits.Float(mandatory=True)
    primary_sets = traits.List(traits.Str, value=["primary"], usedefault=True)
    sources = traits.List(traits.Str)


class CompareConnectome(SimpleInterface):
    """The main network on a second connectome or cohort, and how alike they are."""

    input_spec = _CompareInputSpec
    output_spec = _FilesOutputSpec

    def _run_interface(self, runtime):
        files = outputs.write_connectome_comparison(
            _writer(self.inputs.writer), GroupResults.load(self.inputs.results),
            GroupResults.load(self.inputs.compare_results), self.inputs.label,
            dict(self.inputs.entities), self.inputs.threshold, self.inputs.primary_sets,
            list(self.inputs.sources),
        )
        self._results["out_files"] = [str(f) for f in files]
        return runtime


class _PlanInputSpec(_CNMInputSpec):
    results = File(exists=True, mandatory=True)
    plan = File(exists=True, mandatory=True, desc="the plan as JSON (Plan.to_dict)")
    coordinates = File(exists=True, mandatory=True)
    writer = traits.Dict(mandatory=True)
    entities = traits.Dict(mandatory=True)
    threshold = traits.Float(mandatory=True)
    ale_maps = File(exists=True, desc="the plan's ALE computed already (PlanALE); "
                                      "default computed here")


def _load_plan(path: str) -> Plan:
    import json

    from bids_cnm.plan import plan_from_dict

    return plan_from_dict(json.loads(Path(path).read_text()))


class PlanAnalyses(SimpleInterface):
    """Run the analysis plan's validation, DBS and ALE analyses on the group results."""

    input_spec = _PlanInputSpec
    output_spec = _FilesOutputSpec

    def _run_interface(self, runtime):
        from bids_cnm.analyses.ale import load_maps
        from bids_cnm.analyses.run_plan import run_plan
        from bids_cnm.io.coordinates import read_coordinates

        files = run_plan(
            _load_plan(self.inputs.plan), GroupResults.load(self.inputs.results),
            _writer(self.inputs.writer), dict(self.inputs.entities), self.inputs.threshold,
            coordinates=read_coordinates(self.inputs.coordinates),
            ale_maps=load_maps(self.inputs.ale_maps) if isdefined(self.inputs.ale_maps) else None,
        )
        self._results["out_files"] = [str(f) for f in files]
        return runtime


class _PlanALEInputSpec(_CNMInputSpec):
    plan = traits.Dict(mandatory=True, desc="the part of the plan the ALE depends on "
                                            "(run_plan.ale_part)")
    coordinates = File(exists=True, mandatory=True)


class _PlanALEOutputSpec(TraitedSpec):
    maps = File(exists=True, desc="the ALE's maps (bids_cnm.analyses.ale.load_maps)")


class PlanALE(SimpleInterface):
    """The plan's ALE (NiMARE), saved in the node's folder for :class:`PlanAnalyses`.

    It reads only the coordinates: it runs beside the connectome's preparation
    instead of after the connectivity.  Its inputs are the part of the plan it depends
    on, so that editing the rest of the plan does not run it again.
    """

    input_spec = _PlanALEInputSpec
    output_spec = _PlanALEOutputSpec

    def _run_interface(self, runtime):
        from bids_cnm.analyses.ale import save_maps
        from bids_cnm.analyses.run_plan import ALE_MAPS, compute_ale
        from bids_cnm.io.coordinates import read_coordinates
        from bids_cnm.plan import plan_from_dict

        maps = compute_ale(plan_from_dict(self.inputs.plan),
                           read_coordinates(self.inputs.coordinates))
        self._results["maps"] = str(save_maps(maps, runtime.cwd, ALE_MAPS))
        return runtime


class _ReportInputSpec(_CNMInputSpec):
    output_dir = Directory(mandatory=True)
    command = traits.List(traits.Str, desc="the command line of the run")
    after = traits.List(traits.Any, desc="outputs of the steps the report shows")


class _ReportOutputSpec(TraitedSpec):
    report = File(exists=True)


class GroupReport(SimpleInterface):
    """Render the HTML report from the derivatives on disk."""

    input_spec = _ReportInputSpec
    output_spec = _ReportOutputSpec

    def _run_interface(self, runtime):
        from bids_cnm.reports import build_report

        path = build_report(Path(self.inputs.output_dir), command=list(self.inputs.command))
        self._results["report"] = str(path)
        return runtime


class _ParticipantMapsInputSpec(_CNMInputSpec):
    prepared = Directory(exists=True, xor=["subject"], desc="prepared time series")
    subject = traits.Dict(xor=["prepared"],
                          desc="--no-cache: the subject's files (bold, masks), decoded here")
    dtype = traits.Enum("float32", "int16", usedefault=True, desc=DOCS["cache_dtype"])
    seeds = File(exists=True, mandatory=True)
    label = traits.Str(mandatory=True)
    writer = traits.Dict(mandatory=True)
    entities = traits.Dict(mandatory=True)
    sources = traits.List(traits.Str)
    provenance = traits.Dict()
    seed_signal = traits.Enum(*connectivity.SEED_SIGNALS, usedefault=True,
                              desc=DOCS["seed_signal"])
    run_combination = traits.Enum(*connectivity.RUN_COMBINATIONS, usedefault=True,
                                  desc=DOCS["run_combination"])


class ParticipantMaps(SimpleInterface):
    """Write one subject's Fisher-z map of every seed."""

    input_spec = _ParticipantMapsInputSpec
    output_spec = _FilesOutputSpec

    def _run_interface(self, runtime):
        if self.inputs.prepared:
            subject = open_prepared(self.inputs.prepared)
        else:  # --no-cache: decoded once, here
            spec = self.inputs.subject
            subject = stream_subject(spec["bold"], spec.get("masks", []), self.inputs.dtype)
        seeds = load_seeds(self.inputs.seeds)
        zmaps = connectivity.subject_zmaps(
            subject, seeds, signal=self.inputs.seed_signal, runs=self.inputs.run_combination
        )
        writer = _writer(self.inputs.writer)
        writer.write_dataset_description()
        files = outputs.write_participant_maps(
            writer, self.inputs.label, zmaps, subject.voxels, seeds,
            dict(self.inputs.entities), list(self.inputs.sources), dict(self.inputs.provenance),
        )
        files.append(
            writer.write_map(
                dict(self.inputs.entities, sub=self.inputs.label, desc="connectivity"),
                valid_mask(subject).astype(np.uint8),
                seeds.affine,
                "Voxels with valid data in this subject (where its z-maps are defined).",
                list(self.inputs.sources),
                suffix="mask",
                **dict(self.inputs.provenance),
            )
        )
        LOGGER.info("sub-%s: wrote %d z-maps", self.inputs.label, len(files) - 1)
        self._results["out_files"] = [str(f) for f in files]
        return runtime


class _DegreeSampleInputSpec(_CNMInputSpec):
    voxels = File(exists=True, xor=["candidates"], requires=["mask"],
                  desc="analysis mask voxels (.npy)")
    mask = File(exists=True, desc="analysis mask (NIfTI): the grid")
    candidates = File(exists=True, xor=["voxels"],
                      desc="--no-cache: voxels to draw from before the data are read, in "
                      "place of the analysis mask (NIfTI: the brain masks' intersection)")
    n_samples = traits.Int(300, usedefault=True, desc=DOCS["degree_samples"])
    random_seed = traits.Int(0, usedefault=True, desc=DOCS["random_seed"])
    grey_matter = File(exists=True, desc=DOCS["relocation_mask"])
    space = traits.Str("", usedefault=True, desc="template space of the connectome")
    cache_dir = traits.Str("", usedefault=True,
                           desc="folder where the grey matter on the grid is saved for "
                           "later runs (see bids_cnm.analyses.grey_matter.grey_matter)")


class _DegreeSampleOutputSpec(TraitedSpec):
    sample = File(exists=True, desc="sample voxels (.npy; flat indices)")
    grey_matter_source = traits.Str(desc="where the grey matter came from (for sidecars)")


class DegreeSample(SimpleInterface):
    """Draw the fixed grey-matter voxel sample of the degree map (once for all batches)."""

    input_spec = _DegreeSampleInputSpec
    output_spec = _DegreeSampleOutputSpec

    def _run_interface(self, runtime):
        from bids_cnm.analyses.degree import degree_sample
        from bids_cnm.analyses.grey_matter import grey_matter

        if self.inputs.candidates:
            grid = nb.load(self.inputs.candidates)
            pool = np.flatnonzero(np.asarray(grid.dataobj).ravel() > 0).astype(np.int64)
        else:
            grid = nb.load(self.inputs.mask)
            pool = np.load(self.inputs.voxels)
        grey, source = grey_matter(grid.shape[:3], grid.affine, self.inputs.grey_matter or None,
                                   space=self.inputs.space or None,
                                   cache_dir=self.inputs.cache_dir or None)
        sample = degree_sample(pool, grid.shape[:3], grid.affine,
                               self.inputs.n_samples, self.inputs.random_seed, grey)
        out = Path(runtime.cwd) / "degree_sample.npy"
        np.save(out, sample)
        self._results["sample"] = str(out)
        self._results["grey_matter_source"] = source
        return runtime


class _DegreeCheckInputSpec(_CNMInputSpec):
    degree = InputMultiObject(File(exists=True), mandatory=True, desc="per-batch degree sums")
    results = File(exists=True, mandatory=True)
    writer = traits.Dict(mandatory=True)
    entities = traits.Dict(mandatory=True)
    threshold = traits.Float(mandatory=True, desc="main |t| threshold")
    primary_sets = traits.List(traits.Str, value=["primary"], usedefault=True)
    random_seed = traits.Int(0, usedefault=True)
    grey_matter_source = traits.Str(mandatory=True,
                                    desc="where the sample's grey matter came from")
    sources = traits.List(traits.Str)


class DegreeCheck(SimpleInterface):
    """Write the degree map and compare every overlap network with it."""

    input_spec = _DegreeCheckInputSpec
    output_spec = _FilesOutputSpec

    def _run_interface(self, runtime):
        from bids_cnm.analyses.degree import REFERENCE_DOI, degree_check
        from bids_cnm.config import RANDOM_SET

        results = GroupResults.load(self.inputs.results)
        # --no-cache batches cover their own subjects' valid voxels: cut to the analysis mask
        batches = [DegreeSums.load(p).restrict(results.voxels) for p in self.inputs.degree]
        sums = batches[0]
        for other in batches[1:]:
            sums.merge(other)
        if not np.array_equal(sums.voxels, results.voxels):
            raise ValueError("the degree sums and the group results cover different voxels")
        degree = sums.mean()
        # every coordinate set's network (primary first), not the plan's seeds nor the nulls
        named = dict.fromkeys([*self.inputs.primary_sets, *results.seeds.table["set"]])
        sets = [s for s in named if s not in outputs.NON_NETWORK_SETS and s != RANDOM_SET
                and len(results.columns(s, "main"))]
        check = degree_check(results, degree, self.inputs.threshold, sets)
        provenance = {
            "NumberOfSubjects": sums.n, "NumberOfSampleVoxels": len(sums.sample),
            "RandomSeed": self.inputs.random_seed,
            "GreyMatter": self.inputs.grey_matter_source,
            "References": [f"doi:{REFERENCE_DOI}"],
        }
        files = outputs.write_degree_check(
            _writer(self.inputs.writer), results, degree, check, dict(self.inputs.entities),
            self.inputs.threshold, list(self.inputs.sources), provenance,
        )
        self._results["out_files"] = [str(f) for f in files]
        return runtime
