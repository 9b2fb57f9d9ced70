"""The group level: the group table and QC report from what participant runs wrote in OUTPUT_DIR."""

from __future__ import annotations

import logging

LOGGER = logging.getLogger("hcld_bids")


def run_group(config, records) -> int:
    """Group table and QC report from the participant outputs in OUTPUT_DIR."""
    from ..reports.group import run_group as write_group

    tsv, html = write_group(config.execution.output_dir, config.execution.bids_dir, n_jobs=config.nipype.nprocs)
    LOGGER.info("group table %s and report %s written", tsv, html)
    return 0
