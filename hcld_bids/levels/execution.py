"""Running a level's workflow: input checks, nipype settings, execution, and turning a crash into one line.

Everything here is shared by the level runners (:mod:`.participant`, :mod:`.train`); nothing builds a graph.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..errors import CannotCreateOutputError, HCLDError

LOGGER = logging.getLogger("hcld_bids")


def check_t1w_images(records) -> None:
    """Raise :class:`BadDataError` (one line, file named) for the first unusable T1w."""
    from ..preproc.validate import load_t1w

    for record in records:
        load_t1w(record.path)


def check_reference_image(path) -> None:
    """``--reference-image`` must pass the checks of a T1w (3D, whole head, finite, non-empty); else 65/66
    with the option named, so the user knows which of their files is meant."""
    from ..preproc.validate import load_t1w

    try:
        load_t1w(path)
    except HCLDError as err:
        raise type(err)(f"--reference-image {err.message}") from None


def plugin_settings(config) -> dict:
    """nipype plugin and arguments: MultiProc with --nprocs/--mem, or the --use-plugin file."""
    args = dict(config.nipype.plugin_args)
    if config.nipype.plugin == "MultiProc":
        args.setdefault("n_procs", config.nipype.nprocs)
        if config.nipype.mem_gb:
            args.setdefault("memory_gb", config.nipype.mem_gb)
        args.setdefault("raise_insufficient", True)
        # Workers start from a clean server process, not forked from this one: a process whose PyTorch/OpenMP
        # threads are already running (a train level just before, a notebook) deadlocks forked children.
        args.setdefault("mp_context", "forkserver")
        args.pop("maxtasksperchild", None)  # LegacyMultiProc only
    return {"plugin": config.nipype.plugin, "plugin_args": args}


def nipype_execution_settings(config) -> dict:
    """The ``execution`` settings of every workflow of a run.

    Content hashes (not time stamps) and no output pruning: a node's cache key then depends on its inputs
    only, so the train level's preprocessing is found cached by a participant run in the same work
    directory (and by a rerun after the files were copied).
    """
    return {
        "crashfile_format": "txt",
        "stop_on_first_crash": str(bool(config.nipype.stop_on_first_crash)).lower(),
        "remove_unnecessary_outputs": "false",
        "hash_method": "content",
        # the scheduler sleeps this long between looks at its workers (nipype's 2 s default cost a
        # one-participant run 40 s of idling)
        "poll_sleep_duration": "0.2",
    }


def configure_nipype(config) -> None:
    """Set the run's nipype settings globally; call it before any workflow is built."""
    from nipype import config as nipype_config

    for key, value in nipype_execution_settings(config).items():
        nipype_config.set("execution", key, value)
    nipype_config.set("monitoring", "enabled", "false")
    os.environ.setdefault("NIPYPE_NO_ET", "1")


#: How a full disk or quota shows in a node's traceback.
_DISK_FULL_MARKERS = ("No space left on device", "Disk quota exceeded")


def _disk_full_crash(crash_files) -> str | None:
    """The line of a crash file that says a write failed for lack of space, or None."""
    for crash in crash_files:
        try:
            text = Path(crash).read_text(errors="replace")
        except OSError:
            continue
        for line in reversed(text.splitlines()):
            if any(marker in line for marker in _DISK_FULL_MARKERS):
                return " ".join(line.split())[:200]
    return None


def run_workflow(workflow, config) -> None:
    """Run a nipype workflow with the run's settings; a failed node ends the run (exit 1) naming its crash file,
    or with exit 73 when the node failed because the disk or quota is full."""
    configure_nipype(config)
    # A workflow keeps the global settings of the moment it was built, and they win over later global
    # changes: set them on the workflow itself too.
    workflow.config.setdefault("execution", {}).update(nipype_execution_settings(config))
    import gc

    # nipype's scheduler runs a full garbage collection before each submission; with torch, pandas and
    # pybids loaded each took 0.4 s. Objects that exist now live for the whole run: leave them out of it.
    gc.freeze()
    try:
        workflow.run(**plugin_settings(config))
    except RuntimeError as err:
        crashes = sorted(str(p) for p in config.execution.output_dir.glob(f"sub-*/log/{config.execution.run_uuid}/*"))
        where = f"; crash file(s): {', '.join(crashes[:3])}" if crashes else ""
        full = _disk_full_crash(crashes)
        if full is not None:
            raise CannotCreateOutputError(
                f"the disk is full ({full}){where}; free space on the file system of OUTPUT_DIR or the work "
                "directory and rerun (finished steps are reused from the work directory)"
            ) from None
        raise HCLDError(f"{' '.join(str(err).split())[:300]}{where}") from None
    finally:
        gc.unfreeze()


def write_boilerplate(config, manifest=None, **overrides) -> Path:
    """Write ``OUTPUT_DIR/logs/CITATION.{md,bib,html}`` describing this run; returns the Markdown file."""
    from ..reports.boilerplate import citation_context, write_citation

    context = citation_context(config, manifest, **overrides)
    return write_citation(config.execution.output_dir, context)["md"]
