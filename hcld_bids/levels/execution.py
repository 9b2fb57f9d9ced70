"""Running a level's workflow: input checks, nipype settings, execution, and turning a crash into one line.

Everything here is shared by the level runners (:mod:`.participant`, :mod:`.train`); nothing builds a graph.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import re
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


#: What the MultiProc workers import: the fork server (:func:`start_worker_server`) imports it once and every
#: worker starts from that process with all of it loaded (ANTsPy alone takes about 3 s to import, torch 2 s).
WORKER_PRELOAD = (
    "__main__",  # multiprocessing's own default
    "hcld_bids._interrupt",  # before the heavy imports: a Ctrl-C while they run ends the server quietly
    "numpy", "nibabel", "scipy.ndimage", "nipype.pipeline.engine", "nipype.pipeline.plugins.multiproc",
    "ants", "torch",
    "hcld_bids.interfaces.preproc", "hcld_bids.interfaces.harmonize", "hcld_bids.interfaces.qc",
    "hcld_bids.bids.sink", "hcld_bids.workflows.outputs", "hcld_bids.model.harmonize", "hcld_bids.reports.metrics",
    "hcld_bids.reports.figures", "hcld_bids.reports.participant",
    # the noise estimate of the restoration weight (hcld_bids.model.restore.estimate_noise): scikit-image loads it
    # lazily, 0.6 s at the first harmonization otherwise (a missing module is skipped by the server)
    "pywt", "skimage.restoration._denoise",
)


def start_worker_server(config) -> bool:
    """Start multiprocessing's fork server now, for MultiProc with the ``forkserver`` context (the default).

    The server imports :data:`WORKER_PRELOAD` in its own process while this one indexes the dataset,
    opens the model and builds the graph, and every worker is then forked from it with those modules
    loaded, instead of importing them itself when its first node starts. Nothing runs in the server, so its
    children start as cleanly as before (no torch or OpenMP threads, no CUDA context). Returns whether the
    server is (now) running; a server already running keeps the modules it was started with.
    """
    settings = plugin_settings(config)
    if settings["plugin"] != "MultiProc" or settings["plugin_args"].get("mp_context") != "forkserver":
        return False
    import multiprocessing
    from multiprocessing import forkserver

    # the server and its workers keep the environment of this moment
    os.environ.setdefault("NIPYPE_NO_ET", "1")
    multiprocessing.get_context("forkserver").set_forkserver_preload(list(WORKER_PRELOAD))
    server = getattr(forkserver, "_forkserver", None)
    was_running = getattr(server, "_forkserver_pid", None) is not None
    forkserver.ensure_running()
    pid = getattr(server, "_forkserver_pid", None)
    if not was_running and pid is not None:
        atexit.register(_stop_worker_server, pid)
    return True


@contextlib.contextmanager
def worker_pool(config):
    """A pool of up to ``--nprocs`` processes forked from the run's worker server (:func:`start_worker_server`),
    with what they need already imported; None when no such server runs (then work where you are: starting
    one just for this would cost more than it saves)."""
    from multiprocessing import forkserver

    settings = plugin_settings(config)
    running = getattr(getattr(forkserver, "_forkserver", None), "_forkserver_pid", None) is not None
    if (settings["plugin"] != "MultiProc" or settings["plugin_args"].get("mp_context") != "forkserver"
            or not running):
        yield None
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=max(1, int(config.nipype.nprocs)),
                             mp_context=multiprocessing.get_context("forkserver"),
                             initializer=_start_orphan_check, initargs=(os.getpid(),)) as pool:
        yield pool


def _stop_worker_server(pid: int) -> None:
    """At exit: end the fork server this process started. Left alone it exits on its own once this process is
    gone, but only after tearing down torch and ANTsPy (seconds), with this process's standard output and error
    still open: a pipe reading them (``| tee``, a job's log capture) waited for it."""
    import signal

    try:
        os.kill(pid, signal.SIGTERM)
    except OSError:
        pass


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


def _interrupted(crash_files) -> bool:
    """Whether a crash file of this run records a node stopped by Ctrl-C (``KeyboardInterrupt``)."""
    return any(read_crash_file(crash)[1].startswith("KeyboardInterrupt") for crash in crash_files)


def _unwritable_output(crash_files) -> tuple[str, str] | None:
    """``(crash file, error)`` of a node that writes the outputs and was refused the permission (or met a
    read-only file system): exit 73, as when OUTPUT_DIR itself cannot be written. None otherwise."""
    for crash in crash_files:
        node, error = read_crash_file(crash)
        if ".outputs_wf." in f".{node}." and error.startswith(("PermissionError", "OSError: [Errno 30]")):
            return crash, error
    return None


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


#: What a failed node was doing, in the user's words: (sub-workflow, node) or node -> step.
_STEPS = {
    "validate": "the input check", "n4_head": "the bias correction (N4, whole head)",
    "register": "the registration to the template", "mask_first": "the first brain mask",
    "mask_first_native": "the first brain mask in T1w space", "n4_brain": "the bias correction (N4, brain)",
    ("anat_preproc_wf", "to_template"): "the resampling to the template", "brain_mask": "the brain mask",
    "brain_mask_native": "the brain mask in T1w space", "scale": "the intensity scaling",
    "crop": "the crop to the model grid", "harmonize": "the harmonization",
    ("harmonization_wf", "to_template"): "placing the harmonized image on the template grid",
    "to_native": "the resampling of the harmonized image to T1w space", "harmonization_qc": "the quality control",
    "itk_xfm": "the export of the transform", "provenance": "the provenance record",
    "outputs_wf": "writing the outputs", "export_training_input": "the export of the training inputs",
}
_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Interrupt|Exit)|[A-Z]\w*Error\w*)(?:: ?(.*))?$")


def _t1w_labels(records) -> dict[str, str]:
    """``sub_<l>_wf.<t1w wf name>`` -> ``sub-<l>_..._T1w`` (the image a node path belongs to)."""
    from ..workflows.base import _t1w_label, subject_wf_name, t1w_wf_name

    return {f"{subject_wf_name(r.subject)}.{t1w_wf_name(r)}": f"{_t1w_label(r)}_T1w" for r in records or []}


def read_crash_file(path) -> tuple[str, str]:
    """``(node full name, last exception line)`` of a nipype crash file (text format)."""
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return "", ""
    node = next((line[len("Node:"):].strip() for line in lines if line.startswith("Node:")), "")
    error = ""
    for line in lines[next((i for i, line in enumerate(lines) if line.startswith("Traceback")), len(lines)):]:
        match = _EXCEPTION_LINE.match(line.strip())
        if match and not match.group(1).endswith("NodeExecutionError"):
            error = f"{match.group(1).rsplit('.', 1)[-1]}: {match.group(2) or ''}".strip().rstrip(":")
    return node, " ".join(error.split())[:300]


def describe_failure(node: str, records=None) -> str:
    """``sub-01 (sub-01_T1w): the registration to the template`` for the full name of a failed node."""
    parts = node.split(".")[1:] if node.startswith("hcld_bids_wf.") else node.split(".")
    labels = _t1w_labels(records)
    step = _STEPS.get(tuple(parts[-2:])) if len(parts) >= 2 else None
    step = step or _STEPS.get(parts[-1]) or next((_STEPS[p] for p in parts[::-1] if p in _STEPS), None)
    step = step or f"step {parts[-1] if parts else node}"
    if parts and parts[0] == "reference_preproc_wf":
        return f"the --reference-image: {step}"
    who = ""
    if parts and (match := re.match(r"^sub_([A-Za-z0-9]+)_wf$", parts[0])):
        image = labels.get(".".join(parts[:2])) if len(parts) > 1 else None
        if image is None and parts[1:2] == ["harmonize_batch_wf"] and len(parts) > 3:
            image = labels.get(f"{parts[0]}.{parts[2]}")  # an image's steps after its participant's batch (CUDA)
        who = f"sub-{match.group(1)}" + (f" ({image})" if image else "")
    return f"{who}: {step}" if who else step


def failure_message(crash_files, records=None) -> str:
    """One line for a run whose nodes failed: who, which step, the error, the crash file, what to do."""
    failures = []
    for crash in crash_files:
        node, error = read_crash_file(crash)
        failures.append((describe_failure(node, records) if node else "a step", error, crash))
    if not failures:
        return ("a workflow step failed without leaving a crash file; rerun with -v to see nipype's messages "
                "(finished steps are reused)")
    what, error, crash = failures[0]
    line = f"{what} failed" + (f" ({error})" if error else "") + f"; crash file: {crash}"
    if len(failures) > 1:
        others = sorted({f[0].split(":")[0] for f in failures[1:]})
        line += (f"; {len(failures) - 1} more failed step(s) ({', '.join(others[:5])}), crash files next to "
                 "that one")
    return line + "; fix the cause and run the same command again (finished steps are reused)"


def crash_files(config) -> list[str]:
    """Crash files this run wrote (``OUTPUT_DIR/sub-*/log/<run uuid>/``), oldest first."""
    found = config.execution.output_dir.glob(f"sub-*/log/{config.execution.run_uuid}/crash-*")
    return [str(p) for p in sorted(found, key=lambda p: (p.stat().st_mtime, p.name))]


def remove_old_crash_files(config, records) -> list[Path]:
    """After a successful run: remove crash files of earlier runs for the images this run finished.

    Only crash files of nodes of these images (and of the reference image) go; crash files of other
    images of the same subject (e.g. another session, not selected this time) stay. Empty run
    directories under ``sub-<label>/log/`` are removed too.
    """
    labels = _t1w_labels(records)
    reference = bool(getattr(config.workflow, "reference_image", None))
    removed = []
    for subject in sorted({r.subject for r in records}):
        log_dir = config.execution.output_dir / f"sub-{subject}" / "log"
        if not log_dir.is_dir():
            continue
        for run_dir in sorted(d for d in log_dir.iterdir() if d.is_dir() and d.name != config.execution.run_uuid):
            for crash in sorted(run_dir.glob("crash-*")):
                node, _ = read_crash_file(crash)
                parts = node.split(".")[1:]
                batch = parts[1:2] == ["harmonize_batch_wf"]  # the participant's images together (CUDA)
                if ".".join(parts[:2]) in labels or batch or (reference and parts[:1] == ["reference_preproc_wf"]):
                    crash.unlink(missing_ok=True)
                    removed.append(crash)
            try:
                run_dir.rmdir()  # only when empty
            except OSError:
                pass
        try:
            log_dir.rmdir()
        except OSError:
            pass
    if removed:
        LOGGER.info("removed %d crash file(s) of earlier runs: this run finished those steps", len(removed))
    return removed


def _worker_interrupted(signum, frame) -> None:
    """SIGINT in a MultiProc worker (Ctrl-C reaches the whole process group). Running a node: interrupt it
    (nipype records the interruption and the main process, interrupted too, ends the run with exit 130).
    Idle, waiting for work: leave quietly, without the traceback that multiprocessing prints for a worker
    that dies of ``KeyboardInterrupt``."""
    while frame is not None:
        if frame.f_code.co_name == "run_node":
            raise KeyboardInterrupt
        frame = frame.f_back
    raise SystemExit(130)


#: Seconds between two looks of a worker at whether the process that started it is still there.
ORPHAN_CHECK_S = 2.0


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _exit_when_orphaned(main_pid: int) -> None:
    """In a daemon thread of a worker: exit once the run's main process is gone. An idle worker otherwise
    waits on its task queue forever when the main process was killed before it could stop the pool (a second
    Ctrl-C during the shutdown, SIGKILL); and the fork server, which hands every worker the end of the pipe
    it watches for the main process, would wait for the workers."""
    import time

    while _process_exists(main_pid):
        time.sleep(ORPHAN_CHECK_S)
    os._exit(1)


def _start_orphan_check(main_pid: int) -> None:
    """Start :func:`_exit_when_orphaned` in a daemon thread (a pool's initializer)."""
    import threading

    threading.Thread(target=_exit_when_orphaned, args=(main_pid,), name="orphan-check", daemon=True).start()


def _init_worker(cwd, log_queue, main_pid=None) -> None:
    """Start of a MultiProc worker: nipype's own set-up, then its log records (nipype's and ours) go to the
    main process through ``log_queue`` instead of the console, so that the main process decides where they
    are shown (the run's log file; the console with ``-v``; progress lines). Ctrl-C and the death of the main
    process end an idle worker quietly (:func:`_worker_interrupted`, :func:`_exit_when_orphaned`)."""
    import signal
    from logging.handlers import QueueHandler

    from nipype.pipeline.plugins.multiproc import process_initializer

    process_initializer(cwd)
    signal.signal(signal.SIGINT, _worker_interrupted)
    if main_pid is not None:
        _start_orphan_check(main_pid)
    handler = QueueHandler(log_queue)
    for name in ("nipype", "hcld_bids"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.propagate = False
    logging.getLogger("hcld_bids").setLevel(logging.INFO)


class _Redispatch(logging.Handler):
    """Hands a record forwarded by a worker to this process's logger of the same name."""

    def handle(self, record):  # noqa: D102 - no lock needed, the loggers lock their handlers
        logger = logging.getLogger(record.name)
        if logger.isEnabledFor(record.levelno):
            logger.handle(record)
        return True

    def emit(self, record):  # pragma: no cover - handle() does the work
        pass


#: Longest wait of the MultiProc scheduler between two looks at its workers; it looks as soon as one finishes.
WAKE_TIMEOUT = 1.0


def _multiproc_runner(plugin_args: dict, log_queue):
    """nipype's MultiProc plugin whose workers forward their log records to ``log_queue``, and whose scheduler
    wakes up when a worker finishes a node instead of polling at a fixed interval (nipype sleeps
    ``poll_sleep_duration`` between looks; :func:`run_workflow` sets it to 0 for this plugin and the wait
    happens here, on an event the pool's completion callback sets)."""
    import multiprocessing
    import threading
    from concurrent.futures import ProcessPoolExecutor

    from nipype.pipeline.plugins.multiproc import MultiProcPlugin

    class HCLDMultiProcPlugin(MultiProcPlugin):  # the name must end in "Plugin" (nipype derives its own from it)
        def __init__(self, plugin_args=None):
            super().__init__(plugin_args=plugin_args)
            self.pool.shutdown(wait=False)  # no worker was started yet: replace the pool, same settings
            self.pool = ProcessPoolExecutor(
                max_workers=self.processors, initializer=_init_worker, initargs=(self._cwd, log_queue, os.getpid()),
                mp_context=multiprocessing.get_context(self.plugin_args.get("mp_context")))
            self._finished = threading.Event()

        def _async_callback(self, args):  # in the pool's thread, when a worker finishes
            try:
                super()._async_callback(args)  # stores the result first, then wakes the scheduler
            except Exception:  # noqa: BLE001
                # The worker raised past nipype's own error capture (a node that failed before writing its
                # result file, e.g. an input its interface refuses): nipype never stores a result then and
                # waits for the task forever. Store it as the crash it is.
                import sys
                from traceback import format_exception

                taskid = next((tid for tid, future in list(self._task_obj.items()) if future is args), None)
                if taskid is not None:
                    self._taskresult[taskid] = {"result": None, "taskid": taskid,
                                                "traceback": format_exception(*sys.exc_info())}
            finally:
                self._finished.set()

        def _task_finished_cb(self, jobid, cached=False):
            # also for nodes run in this process or found cached: their dependents are ready at once
            super()._task_finished_cb(jobid, cached=cached)
            self._finished.set()

        def _send_procs_to_workers(self, updatehash=False, graph=None):
            super()._send_procs_to_workers(updatehash=updatehash, graph=graph)
            # nipype's loop collects finished results, submits what is ready (above), then sleeps: wait here
            # until a worker finishes instead. A result stored between the wake-up and clear() is collected
            # by the next look, which follows at once.
            self._finished.wait(WAKE_TIMEOUT)
            self._finished.clear()

    return HCLDMultiProcPlugin(plugin_args=plugin_args)


def run_workflow(workflow, config, records=None, progress=None) -> None:
    """Run a nipype workflow with the run's settings.

    A failed node ends the run with one line (exit 1) naming the subject, the image and the step, the error
    and the crash file (:func:`failure_message`), or with exit 73 when it failed because the disk or quota is
    full. ``records``: the T1w images of the graph, to name them. ``progress``: a
    :class:`hcld_bids.levels.progress.Progress` that prints a line per subject and stage.
    """
    import multiprocessing
    from logging.handlers import QueueListener

    from .progress import ProgressHandler

    configure_nipype(config)
    # A workflow keeps the global settings of the moment it was built, and they win over later global
    # changes: set them on the workflow itself too.
    workflow.config.setdefault("execution", {}).update(nipype_execution_settings(config))
    import gc

    settings = plugin_settings(config)
    plugin, args = settings["plugin"], dict(settings["plugin_args"])
    if progress is not None and plugin in ("Linear", "MultiProc", "LegacyMultiProc"):
        args["status_callback"] = progress.status
    listener = None
    if plugin == "MultiProc":
        start_worker_server(config)
        log_queue = multiprocessing.get_context(args.get("mp_context")).Queue()
        listener = QueueListener(log_queue, _Redispatch())
        runner = {"plugin": _multiproc_runner(args, log_queue)}
        # the plugin waits for its workers itself (_multiproc_runner): no fixed sleep in nipype's loop
        workflow.config["execution"]["poll_sleep_duration"] = "0"
    else:
        runner = {"plugin": plugin, "plugin_args": args}
    interface_logger = logging.getLogger("nipype.interface")
    progress_handler = ProgressHandler(progress) if progress is not None else None
    if progress_handler is not None:
        interface_logger.addHandler(progress_handler)
    # nipype's scheduler runs a full garbage collection before each submission; with torch, pandas and
    # pybids loaded each took 0.4 s. Objects that exist now live for the whole run: leave them out of it.
    gc.freeze()
    try:
        if listener is not None:
            listener.start()
        workflow.run(**runner)
    except RuntimeError:
        crashes = crash_files(config)
        if _interrupted(crashes):
            # Ctrl-C reached a worker first: the run was interrupted, not failed (exit 130, as for the main)
            raise KeyboardInterrupt from None
        full = _disk_full_crash(crashes)
        if full is not None:
            where = f"; crash file(s): {', '.join(crashes[:3])}" if crashes else ""
            raise CannotCreateOutputError(
                f"the disk is full ({full}){where}; free space on the file system of OUTPUT_DIR or the work "
                "directory and rerun (finished steps are reused from the work directory)"
            ) from None
        denied = _unwritable_output(crashes)
        if denied is not None:
            crash, error = denied
            raise CannotCreateOutputError(
                f"writing the outputs failed ({error}); check the permissions of OUTPUT_DIR and what is in it, then "
                f"rerun (finished steps are reused); crash file: {crash}"
            ) from None
        raise HCLDError(failure_message(crashes, records)) from None
    finally:
        gc.unfreeze()
        if listener is not None:
            listener.stop()
        if progress_handler is not None:
            interface_logger.removeHandler(progress_handler)


def write_boilerplate(config, manifest=None, **overrides) -> Path:
    """Write ``OUTPUT_DIR/logs/CITATION.{md,bib,html}`` describing this run; returns the Markdown file."""
    from ..reports.boilerplate import citation_context, write_citation

    context = citation_context(config, manifest, **overrides)
    return write_citation(config.execution.output_dir, context)["md"]
