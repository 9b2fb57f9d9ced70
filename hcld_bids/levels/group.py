"""The group level: the group table and QC report from what participant runs wrote in OUTPUT_DIR."""

from __future__ import annotations

import logging

from .progress import PROGRESS, print_summary

LOGGER = logging.getLogger("hcld_bids")


def run_group(config, records) -> int:
    """Group table and QC report from the participant outputs in OUTPUT_DIR; ends with a summary."""
    from ..reports.group import write_group

    PROGRESS.info("group level: reading the participant outputs in %s", config.execution.output_dir)
    result = write_group(config.execution.output_dir, config.execution.bids_dir, n_jobs=config.nipype.nprocs)
    summarize_group(config, result)
    return 0


def summarize_group(config, result) -> None:
    """Print the summary that ends the group level."""
    summary = result.summary
    qc_failed = [row for row in result.flagged if any(not f.startswith("missing") for f in row["flags"])]
    lines = []
    if summary.get("demo"):
        lines.append(("warning", "the images were harmonized with the demo model shipped with hcld-bids: for "
                                 "trying the app, not for research results"))
    for row in qc_failed[:20]:
        lines.append(("warning", f"QC FAILED for {row['image']}: {', '.join(row['flags'])}"))
    if len(qc_failed) > 20:
        lines.append(("warning", f"... and {len(qc_failed) - 20} more; the flags column of {result.tsv} lists "
                                 "them all"))
    lines.append(("info", f"QC: {len(qc_failed)} of {summary['images']} image(s) flagged" if qc_failed
                  else f"QC: none of the {summary['images']} image(s) flagged"))
    if result.incomplete:
        lines.append(("warning", f"{len(result.incomplete)} image(s) incomplete (skipped): "
                                 + ", ".join(result.incomplete[:10])))
    at_target = summary.get("at_target") or {}
    if at_target.get("n"):
        lines.append(("info", f"already at the target site: {at_target['n']} image(s), harmonized anyway; median "
                              f"change {at_target['change']:.3f} against {at_target['others_change']:.3f} for the "
                              "others (mean absolute difference in the brain)"))
    if summary.get("verdict"):
        lines.append(("warning" if not summary["verdict"]["ok"] else "info", f"verdict: {summary['verdict']['text']}"))
    lines.append(("info", f"report: {result.html}; table: {result.tsv}"))
    sites = ", ".join(f"{site} ({n})" for site, n in summary["sites"].items())
    print_summary(f"group level finished: {summary['images']} harmonized image(s) of {summary['participants']} "
                  f"participant(s) from {len(summary['sites'])} site(s): {sites}", lines)
