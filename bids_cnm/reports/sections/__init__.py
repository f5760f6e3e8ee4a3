"""The report's sections, one module per part of the paper they follow.

Each builder takes the :class:`~bids_cnm.reports.context.ReportContext` and returns
a :class:`~bids_cnm.reports.blocks.Section`, or ``None`` when the run wrote none of
its files.  Builders may import :mod:`bids_cnm.reports` modules, never each other's
private helpers except ``common``.
"""

from bids_cnm.reports.sections.ale import ale_section
from bids_cnm.reports.sections.dbs import dbs_section
from bids_cnm.reports.sections.degree import degree_section
from bids_cnm.reports.sections.network import network_section, seeds_section
from bids_cnm.reports.sections.other import other_section
from bids_cnm.reports.sections.overview import (
    inputs_section,
    provenance_section,
    summary_section,
)
from bids_cnm.reports.sections.sensitivity import sensitivity_section
from bids_cnm.reports.sections.specificity import specificity_section
from bids_cnm.reports.sections.validation import validation_section

__all__ = ["BODY", "summary_section", "provenance_section", "inputs_section",
           "network_section", "seeds_section", "sensitivity_section", "specificity_section",
           "validation_section", "dbs_section", "ale_section", "degree_section",
           "other_section"]

#: the body sections, in the order of the paper's figures ("other" last: it shows what
#: the others left)
BODY = (inputs_section, network_section, seeds_section, sensitivity_section,
        specificity_section, validation_section, dbs_section, ale_section, degree_section,
        other_section)
