"""The methods boilerplate of a run: ``logs/CITATION.md``, ``.html`` and ``.bib``.

As fMRIPrep does, a paragraph describing what this run did, to copy into a
paper's methods, with its references.  It is composed from the run's settings
(:class:`~bids_cnm.config.Config`), the connectome and coordinates actually
used, the analysis plan, and, when the ALE ran, NiMARE's own ``description_``
and ``bibtex_`` (kept in the ALE summary's sidecar).  Citations are written
``[@key]`` (pandoc), resolved by the ``.bib`` file.
"""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass
from pathlib import Path

from bids_cnm import __version__
from bids_cnm.config import Config

#: BibTeX entries of everything the boilerplate may cite, by key
REFERENCES: dict[str, str] = {
    "ji2025": """@article{ji2025,
  author = {Ji and others},
  note = {The reference study of coordinate network mapping; authors and title: see the DOI},
  journal = {Nature Communications},
  year = {2025},
  doi = {10.1038/s41467-025-57392-7}
}""",
    "nilearn": """@article{nilearn,
  author = {Abraham, Alexandre and Pedregosa, Fabian and Eickenberg, Michael and Gervais,
    Philippe and Mueller, Andreas and Kossaifi, Jean and Gramfort, Alexandre and Thirion,
    Bertrand and Varoquaux, Gael},
  title = {Machine learning for neuroimaging with scikit-learn},
  journal = {Frontiers in Neuroinformatics},
  volume = {8},
  pages = {14},
  year = {2014},
  doi = {10.3389/fninf.2014.00014}
}""",
    "nipype": """@article{nipype,
  author = {Gorgolewski, Krzysztof and Burns, Christopher D. and Madison, Cindee and Clark, Dav
    and Halchenko, Yaroslav O. and Waskom, Michael L. and Ghosh, Satrajit S.},
  title = {Nipype: a flexible, lightweight and extensible neuroimaging data processing framework
    in Python},
  journal = {Frontiers in Neuroinformatics},
  volume = {5},
  pages = {13},
  year = {2011},
  doi = {10.3389/fninf.2011.00013}
}""",
    "bidsapps": """@article{bidsapps,
  author = {Gorgolewski, Krzysztof J. and Alfaro-Almagro, Fidel and Auer, Tibor and others},
  title = {{BIDS} apps: improving ease of use, accessibility, and reproducibility of
    neuroimaging data analysis methods},
  journal = {PLoS Computational Biology},
  volume = {13},
  number = {3},
  pages = {e1005209},
  year = {2017},
  doi = {10.1371/journal.pcbi.1005209}
}""",
    "nimare": """@article{nimare,
  author = {Salo, Taylor and Yarkoni, Tal and Nichols, Thomas E. and others},
  title = {{NiMARE}: Neuroimaging Meta-Analysis Research Environment},
  journal = {Aperture Neuro},
  volume = {3},
  pages = {1--32},
  year = {2023},
  doi = {10.52294/001c.87681}
}""",
    "tfce": """@article{tfce,
  author = {Smith, Stephen M. and Nichols, Thomas E.},
  title = {Threshold-free cluster enhancement: addressing problems of smoothing, threshold
    dependence and localisation in cluster inference},
  journal = {NeuroImage},
  volume = {44},
  number = {1},
  pages = {83--98},
  year = {2009},
  doi = {10.1016/j.neuroimage.2008.03.061}
}""",
    "nichols2002": """@article{nichols2002,
  author = {Nichols, Thomas E. and Holmes, Andrew P.},
  title = {Nonparametric permutation tests for functional neuroimaging: a primer with examples},
  journal = {Human Brain Mapping},
  volume = {15},
  number = {1},
  pages = {1--25},
  year = {2002},
  doi = {10.1002/hbm.1058}
}""",
    "vandenheuvel2026": """@article{vandenheuvel2026,
  author = {van den Heuvel and others},
  note = {Lesion and coordinate network maps can largely reflect the connectome's degree
    structure; title: see the DOI},
  journal = {Nature Neuroscience},
  year = {2026},
  doi = {10.1038/s41593-025-02196-7}
}""",
    "horn2017": """@article{horn2017,
  author = {Horn, Andreas and Reich, Martin and Vorwerk, Johannes and others},
  title = {Connectivity predicts deep brain stimulation outcome in {P}arkinson disease},
  journal = {Annals of Neurology},
  volume = {82},
  number = {1},
  pages = {67--78},
  year = {2017},
  doi = {10.1002/ana.24974}
}""",
    "kuncel2008": """@article{kuncel2008,
  author = {Kuncel, Alexis M. and Cooper, Scott E. and Grill, Warren M.},
  title = {A method to estimate the spatial extent of activation in thalamic deep brain
    stimulation},
  journal = {Clinical Neurophysiology},
  volume = {119},
  number = {9},
  pages = {2148--2158},
  year = {2008},
  doi = {10.1016/j.clinph.2008.02.025}
}""",
    "maedler2012": """@article{maedler2012,
  author = {M{\\"a}dler, Burkhard and Coenen, Volker A.},
  title = {Explaining clinical effects of deep brain stimulation through simplified target-
    specific modeling of the volume of activated tissue},
  journal = {American Journal of Neuroradiology},
  volume = {33},
  number = {6},
  pages = {1072--1080},
  year = {2012},
  doi = {10.3174/ajnr.A2906}
}""",
    "dembek2017": """@article{dembek2017,
  author = {Dembek, Till A. and others},
  title = {Probabilistic mapping of deep brain stimulation effects in essential tremor},
  journal = {NeuroImage: Clinical},
  volume = {13},
  pages = {164--173},
  year = {2017},
  doi = {10.1016/j.nicl.2016.11.019}
}""",
}


@dataclass(frozen=True)
class RunFacts:
    """What the boilerplate describes beyond the settings.

    Parameters
    ----------
    n_subjects : int
        Connectome subjects used.
    space, res, task : str or None
        The connectome's BOLD runs.
    connectome : str
        Name of the connectome (its ``dataset_description.json`` ``Name``).
    studies : dict
        Coordinate set -> number of studies.
    n_coordinates : int
        Rows of the coordinate table.
    """

    n_subjects: int
    space: str | None
    res: str | None
    task: str | None
    connectome: str
    studies: dict
    n_coordinates: int


def _sets_text(studies: dict) -> str:
    parts = [f"{n} studies of set '{name}'" for name, n in studies.items()]
    return ", ".join(parts) if parts else "no studies"


def compose(config: Config, facts: RunFacts, plan=None, ale: dict | None = None
            ) -> tuple[str, list[str], str]:
    """The boilerplate paragraphs (Markdown with ``[@key]`` citations).

    Parameters
    ----------
    config : Config
    facts : RunFacts
    plan : bids_cnm.plan.Plan, optional
        The analysis plan (validation, DBS, ALE sections).
    ale : dict, optional
        ``{"description": ..., "bibtex": ...}`` from NiMARE, when the ALE ran.

    Returns
    -------
    (markdown, keys, extra_bibtex)
        The text, the reference keys it cites, NiMARE's BibTeX (may be empty).
    """
    keys: list[str] = []

    def cite(*names: str) -> str:
        keys.extend(n for n in names if n not in keys)
        return "[" + "; ".join(f"@{n}" for n in names) + "]"

    grid = f"{facts.space}" + (f" (res-{facts.res})" if facts.res else "")
    threshold = config.t_threshold
    paragraphs = []
    text = (
        f"Coordinate network mapping {cite('ji2025')} was performed with bids_cnm "
        f"{__version__}, a BIDS App {cite('bidsapps')} built on nipype {cite('nipype')} and "
        f"nilearn {cite('nilearn')}. The normative connectome was '{facts.connectome}': "
        f"preprocessed resting-state BOLD of {facts.n_subjects} subjects"
        f"{' (task ' + facts.task + ')' if facts.task else ''} in {grid}. "
        f"The coordinate table held {facts.n_coordinates} coordinates from "
        f"{_sets_text(facts.studies)}. Each study's coordinates were united into one seed of "
        f"{config.sphere_diameter:g} mm diameter spheres. "
    )
    signal = ("the mean BOLD signal of its voxels" if config.seed_signal == "mean"
              else "the mean of its voxels' standardized time series")
    runs = ("Fisher z of each run's correlation was averaged over runs"
            if config.run_combination == "average"
            else "the standardized runs were concatenated before correlating")
    text += (
        f"A seed's time course was {signal}; it was correlated (Pearson r) with every voxel "
        f"in every subject, and for subjects with several runs {runs}. The Fisher z maps were "
        f"tested against 0 across subjects with a one-sample t-test, each study's t-map was "
        f"binarized at |t| > {threshold:g}, and the binarized maps were overlapped: the "
        f"coordinate network is the fraction of studies connected to each voxel (positive "
        f"minus negative)."
    )
    paragraphs.append(text)
    variants = []
    if config.t_thresholds:
        variants.append("thresholds " + ", ".join(f"{t:g}" for t in config.t_thresholds))
    if config.sphere_diameters:
        variants.append("sphere diameters " + ", ".join(f"{d:g} mm"
                                                        for d in config.sphere_diameters))
    if config.per_coordinate:
        variants.append("one seed per coordinate")
    if config.subgroups:
        variants.append("subgroups and leave-one-level-out networks of "
                        + ", ".join(config.subgroups))
    if config.compare_connectome or config.compare_participant_filter:
        variants.append("a second connectome or cohort")
    if variants:
        paragraphs.append(
            "The robustness of the network was assessed with variants computed in the same "
            "pass over the connectome: " + "; ".join(variants) + ", each compared with the "
            "main network by spatial correlation.")
    if config.specificity:
        maps = {"t": "unthresholded t-maps", "binarized": "binarized maps",
                "liebermeister": "binarized maps (Liebermeister test)"}[config.specificity_maps]
        text = (
            f"Specificity was tested by comparing the {maps} of the study networks "
            f"({', '.join(config.primary_sets)}) with those of control networks ("
            + (", ".join(config.control_sets) if config.control_sets
               else "every other coordinate set")
        )
        if config.random_relocations > 0:
            mode = ("each coordinate on its own" if config.relocation_mode == "independent"
                    else "each study's coordinates by one random rigid transform")
            text += (f", and {config.random_relocations} randomly relocated copies of every "
                     f"study, relocated within grey matter ({mode})")
        text += ")"
        if config.specificity_maps != "liebermeister":
            text += (f" with {config.n_permutations} label permutations "
                     f"{cite('nichols2002')}")
            if config.tfce:
                text += f" and threshold-free cluster enhancement {cite('tfce')}"
            text += ", family-wise error corrected by the maximum statistic"
        paragraphs.append(text + f" (random seed {config.random_seed}).")
    if config.degree_check:
        paragraphs.append(
            f"To check that the network is more than the connectome's hubs "
            f"{cite('vandenheuvel2026')}, a degree map (mean |Fisher z| of every voxel to "
            f"{config.degree_samples} randomly sampled grey-matter voxels) was correlated "
            f"with each network, and the network was also reported with degree regressed out.")
    if plan is not None:
        paragraphs += _plan_paragraphs(plan, cite)
    bibtex = ""
    if ale:
        paragraphs.append(f"An activation likelihood estimation of the coordinates was run with "
                          f"NiMARE {cite('nimare')}: " + ale.get("description", "").strip())
        bibtex = ale.get("bibtex", "")
    return "\n\n".join(paragraphs) + "\n", keys, bibtex


def _plan_paragraphs(plan, cite) -> list[str]:
    """Sentences for the analysis plan's validation and DBS sections."""
    out = []
    val = plan.validation
    analyses = []
    if val.roi_overlap:
        analyses.append("overlap with regions of interest ("
                        + ", ".join(item.name for item in val.roi_overlap) + ")")
    if val.spatial_correlation:
        analyses.append("spatial correlation with reference maps ("
                        + ", ".join(item.name for item in val.spatial_correlation) + ")")
    if val.roi_to_roi is not None:
        analyses.append("ROI-to-ROI connectivity of the networks' nodes")
    if val.peaks:
        analyses.append("the location of the network's peaks ("
                        + ", ".join(item.name for item in val.peaks) + ")")
    if analyses:
        out.append("The network was validated by " + "; ".join(analyses) + ".")
    if plan.dbs is not None:
        vat = {"kuncel2008": "kuncel2008", "maedler2012": "maedler2012",
               "dembek2017": "dembek2017"}.get(plan.dbs.vat_model)
        model = f" (volume of activated tissue model {cite(vat)})" if vat else ""
        out.append(
            f"Deep brain stimulation outcomes were related to the connectivity of each "
            f"patient's stimulation volume{model} following {cite('horn2017')}, with "
            f"{plan.dbs.n_permutations} permutations.")
    return out


def _html(markdown: str, keys: list[str]) -> str:
    """A standalone HTML page of the boilerplate and its references."""
    body = "".join(f"<p>{html.escape(p)}</p>\n" for p in markdown.strip().split("\n\n"))
    body = re.sub(r"\[(@[^\]]+)\]", lambda m: f"<cite>[{m.group(1)}]</cite>", body)
    refs = "".join(f"<li id=\"{k}\"><pre>{html.escape(REFERENCES[k])}</pre></li>\n"
                   for k in keys)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<title>bids_cnm methods boilerplate</title></head><body>\n"
        f"<h1>Methods</h1>\n{body}<h2>References</h2>\n<ul>\n{refs}</ul>\n</body></html>\n"
    )


def write_boilerplate(logs: Path, config: Config, facts: RunFacts, plan=None,
                      ale: dict | None = None) -> list[Path]:
    """Write ``CITATION.md``, ``CITATION.html`` and ``CITATION.bib`` into ``logs``.

    Returns
    -------
    list of Path
    """
    from bids_cnm.io.derivatives import write_text

    markdown, keys, extra_bib = compose(config, facts, plan, ale)
    intro = ("# Methods boilerplate\n\nGenerated by bids_cnm from what this run did; copy it "
             "into your methods and cite the references (CITATION.bib).\n\n")
    bib = "\n\n".join(REFERENCES[k] for k in keys) + "\n"
    if extra_bib.strip():
        bib += "\n" + extra_bib.strip() + "\n"
    return [
        write_text(logs / "CITATION.md", intro + markdown),
        write_text(logs / "CITATION.html", _html(markdown, keys)),
        write_text(logs / "CITATION.bib", bib),
    ]


def ale_record(root: Path) -> dict | None:
    """NiMARE's description and BibTeX from an ALE summary sidecar under ``root``."""
    for sidecar in sorted(Path(root).glob("ale/*_desc-ale_summary.json")):
        try:
            content = json.loads(sidecar.read_text())
        except (OSError, ValueError):
            continue
        if content.get("NiMAREDescription"):
            return {"description": content["NiMAREDescription"],
                    "bibtex": content.get("NiMAREBibTeX", "")}
    return None
