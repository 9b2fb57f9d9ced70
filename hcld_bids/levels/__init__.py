"""Level runners: what ``hcld-bids BIDS_DIR OUTPUT_DIR <level>`` does once the command line is checked.

Each level has its own module, :mod:`.participant`, :mod:`.group` and :mod:`.train`: it checks what can be
checked before anything runs (model, target, images), builds its workflow with :mod:`hcld_bids.workflows`,
runs it (:mod:`.execution`), writes the reports and prints a summary. The workflows only build graphs and
never import this package.
"""

from __future__ import annotations

from ..errors import HCLDError


def run_level(config, records) -> int:
    """Run the configured analysis level; return the exit code."""
    level = config.execution.analysis_level
    if level == "participant":
        from .participant import run_participant

        return run_participant(config, records)
    if level == "group":
        from .group import run_group

        return run_group(config, records)
    if level == "train":
        from .train import run_train

        return run_train(config, records)
    raise HCLDError(f"the {level} level is not available in this build")


__all__ = ["run_level"]
