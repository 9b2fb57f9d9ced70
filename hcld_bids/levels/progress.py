"""What a level prints while it runs and when it ends.

By default the console gets one line per subject and stage, with the overall position and, while an image
is harmonized, how far the diffusion is (``subject 2/3 (sub-02): harmonizing sub-02_T1w, inversion
10/30``); nipype's own messages go to the run's log file (``OUTPUT_DIR/logs/run-<run id>.log``) and to
the console only with ``-v``. Every level ends with a summary (:func:`print_summary`).

The lines go through the ``hcld_bids.progress`` logger, which the command line always shows. Stages come
from nipype's ``status_callback`` (the main process sees every node start); the diffusion's progress comes
from the harmonization interface's log records (``hcld_progress``), which worker processes forward to this
process (:mod:`.execution`).
"""

from __future__ import annotations

import logging
import threading

PROGRESS = logging.getLogger("hcld_bids.progress")
LOGGER = logging.getLogger("hcld_bids")

#: Sub-workflow (or node) -> the stage a subject is in while it runs.
STAGES = (
    ("anat_preproc_wf", "preprocessing"),
    ("export_training_input", "preprocessing"),
    # the preprocessed image, its mask and transform are written as soon as they exist: still preprocessing
    ("ds_preproc", "preprocessing"),
    ("ds_mask", "preprocessing"),
    ("ds_xfm", "preprocessing"),
    ("itk_xfm", "preprocessing"),
    ("harmonization_wf", "harmonizing"),
    ("harmonize_batch_wf", "harmonizing"),  # a participant's images together, on CUDA
    ("qc_wf", "quality control"),
    ("outputs_wf", "writing outputs"),
    ("provenance", "writing outputs"),
)


def stage_of(fullname: str) -> str | None:
    """The stage of a node from its full name (``hcld_bids_wf.sub_01_wf.t1w_wf.anat_preproc_wf.register``)."""
    parts = fullname.split(".")
    for part in reversed(parts):  # the node first, then the sub-workflows it is in, innermost first
        for key, stage in STAGES:
            if part == key:
                return stage
    return None


class Progress:
    """Console progress of one workflow run over ``records`` (the T1w images of its graph)."""

    def __init__(self, records, *, level: str = "participant"):
        from ..workflows.base import _t1w_label, subject_wf_name

        subjects = sorted({r.subject for r in records})
        self.total = len(subjects)
        self.position = {subject_wf_name(s): (i, s) for i, s in enumerate(subjects, 1)}
        self.subject_of_label = {_t1w_label(r): r.subject for r in records}
        self.index_of_subject = {s: i for i, s in enumerate(subjects, 1)}
        self.level = level
        self._seen: set = set()
        self._shown: dict = {}
        self._lock = threading.Lock()

    def _say(self, key, text: str) -> None:
        with self._lock:
            if key in self._seen:
                return
            self._seen.add(key)
        PROGRESS.info("%s", text)

    def status(self, node, status: str) -> None:
        """nipype's ``status_callback``: a line when a subject enters a stage."""
        if status != "start":
            return
        fullname = getattr(node, "fullname", str(node))
        stage = stage_of(fullname)
        if stage is None:
            return
        parts = fullname.split(".")
        if "reference_preproc_wf" in parts:
            self._say(("reference", stage), f"--reference-image: {stage}")
            return
        where = next((self.position[p] for p in parts if p in self.position), None)
        if where is None:
            return
        index, subject = where
        self._say((subject, stage), f"subject {index}/{self.total} (sub-{subject}): {stage}")

    def harmonizing(self, info: dict) -> None:
        """A progress record of the harmonization interface: ``{label, stage, done, total, percent}``."""
        label = str(info.get("label", ""))
        subject = self.subject_of_label.get(label)
        if subject is None:
            subject = next((s for lab, s in self.subject_of_label.items() if label.startswith(lab)), None)
        head = (f"subject {self.index_of_subject[subject]}/{self.total} (sub-{subject})" if subject
                else "harmonizing")
        text = f"{head}: harmonizing {label}, {info.get('stage')} {info.get('done')}/{info.get('total')}"
        self._say((label, info.get("stage"), info.get("done")), text)


class ProgressHandler(logging.Handler):
    """Turns the harmonization interface's ``hcld_progress`` records into progress lines."""

    def __init__(self, progress: Progress):
        super().__init__(logging.INFO)
        self.progress = progress

    def emit(self, record: logging.LogRecord) -> None:
        info = getattr(record, "hcld_progress", None)
        if isinstance(info, dict):
            try:
                self.progress.harmonizing(info)
            except Exception:  # noqa: BLE001 - progress must never break a run
                self.handleError(record)


def print_summary(title: str, lines: list[tuple[str, str]]) -> None:
    """Print the summary that ends a level: a title line, then ``(level, text)`` lines; ``warning`` lines are
    printed as warnings (failed QC must be impossible to miss)."""
    PROGRESS.info("%s", title)
    for kind, text in lines:
        if kind == "warning":
            LOGGER.warning("%s", text)
        else:
            PROGRESS.info("  %s", text)
