"""Entry point of the ``hcld-bids`` command: arguments -> :class:`~hcld_bids.config.Config` -> run.

Order of work: parse (usage errors 64), check the analysis level (17) and the inputs (66, 64), build the
config, create the output, log and work directories (73), save the config, start the workers' fork
server for the participant and train levels (it imports what the workers need meanwhile), check BIDS_DIR's
dataset_description.json (16; not valid JSON is an error even with --skip-bids-validation), validate
BIDS_DIR (16), select the T1w images (18), resolve their sites (65), write the derivatives'
dataset_description.json, then hand the config and the images to :func:`hcld_bids.levels.run_level`.

Every :class:`~hcld_bids.errors.HCLDError` ends the run with one line on stderr,
``hcld-bids: error: <message>``, and its exit code; so does a full disk, a full quota or a read-only file
system met while writing (73, naming the file). Any other exception is a bug: one line naming a crash
file that holds the traceback, exit code 1. ``-v`` also prints the traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import logging
import os
import re
import sys
import tempfile
import traceback
from pathlib import Path

from ..config import (
    ANALYSIS_LEVELS,
    Config,
    ExecutionConfig,
    NipypeConfig,
    TrainingConfig,
    WorkflowConfig,
    resolve_model,
)
from ..errors import (
    OUTPUT_ERRNOS,
    BadDataError,
    CannotCreateOutputError,
    HCLDError,
    MissingInputError,
    UnknownLevelError,
    UsageError,
    output_error,
)
from .parser import PROG, build_parser, default_nprocs

LOGGER = logging.getLogger("hcld_bids")

_TEMPLATE_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9]*$")
_DEFAULT_PLUGIN_ARGS = {"raise_insufficient": False, "maxtasksperchild": 1}


def _is_within(path: Path, other: Path) -> bool:
    """Whether ``path`` is ``other`` or inside it (after resolving links)."""
    path, other = path.resolve(), other.resolve()
    return path == other or path.is_relative_to(other)


def is_derivatives_of(output_dir: Path, bids_dir: Path) -> bool:
    """Whether ``output_dir`` is ``BIDS_DIR/derivatives/<name>``, where BIDS keeps derivatives datasets (the one
    place inside BIDS_DIR an OUTPUT_DIR may be; BIDS_DIR's index and validation leave derivatives/ out)."""
    output_dir, bids_dir = output_dir.resolve(), bids_dir.resolve()
    return output_dir.parent == bids_dir / "derivatives" and not output_dir.name.startswith(".")


def parse_output_spaces(values: list[str] | None) -> list[str]:
    """Check ``--output-spaces`` values: ``T1w`` or a TemplateFlow template name, no modifiers."""
    spaces: list[str] = []
    for value in values or []:
        if value != "T1w" and not _TEMPLATE_NAME_RE.match(value):
            raise UsageError(
                f"--output-spaces: invalid space {value!r}; use T1w or the model's template name "
                "(the model's grid fixes the resolution, so no ':res-' modifiers)"
            )
        if value not in spaces:
            spaces.append(value)
    return spaces


def load_plugin_file(path: Path) -> tuple[str, dict]:
    """Read ``--use-plugin``: YAML with ``plugin`` (a nipype plugin name) and optional ``plugin_args``."""
    import yaml

    if not path.is_file():
        raise MissingInputError(f"--use-plugin file {path} does not exist")
    try:
        content = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise UsageError(f"--use-plugin file {path} is not valid YAML ({' '.join(str(err).split())})") from None
    if not isinstance(content, dict) or not isinstance(content.get("plugin"), str):
        raise UsageError(f"--use-plugin file {path} must have a 'plugin:' entry (e.g. 'plugin: MultiProc')")
    from nipype.pipeline import plugins

    known = sorted(name[: -len("Plugin")] for name in dir(plugins) if name.endswith("Plugin") and name != "Plugin")
    if not hasattr(plugins, f"{content['plugin']}Plugin"):
        close = difflib.get_close_matches(content["plugin"], known, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise UsageError(f"--use-plugin file {path}: nipype has no plugin {content['plugin']!r}{hint}; choose one of "
                         f"{', '.join(known)}")
    plugin_args = content.get("plugin_args") or {}
    if not isinstance(plugin_args, dict):
        raise UsageError(f"--use-plugin file {path}: 'plugin_args' must be a mapping")
    return content["plugin"], dict(plugin_args)


def build_config(args: argparse.Namespace) -> Config:
    """Check the parsed arguments and turn them into the run's :class:`Config` (no files written)."""
    from ..bids.layout import load_bids_filters

    level = args.analysis_level
    if level not in ANALYSIS_LEVELS:
        close = difflib.get_close_matches(str(level).lower(), ANALYSIS_LEVELS, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise UnknownLevelError(f"unknown analysis level {level!r}{hint}; choose one of {', '.join(ANALYSIS_LEVELS)}")

    bids_dir = args.bids_dir.absolute()
    output_dir = args.output_dir.absolute()
    work_dir = args.work_dir.absolute()
    if not bids_dir.exists():
        raise MissingInputError(f"BIDS_DIR {bids_dir} does not exist")
    if not bids_dir.is_dir():
        raise MissingInputError(f"BIDS_DIR {bids_dir} is not a directory")
    if _is_within(output_dir, bids_dir) and not is_derivatives_of(output_dir, bids_dir):
        raise UsageError(
            f"OUTPUT_DIR {output_dir} is BIDS_DIR or inside it; hcld-bids writes into BIDS_DIR only as "
            f"BIDS_DIR/derivatives/<name> (e.g. {bids_dir / 'derivatives' / 'hcld-bids'}): choose that or an "
            "OUTPUT_DIR outside BIDS_DIR"
        )
    if _is_within(work_dir, bids_dir):
        raise UsageError(f"work directory {work_dir} is inside BIDS_DIR; choose one outside with -w/--work-dir")
    database_dir = args.bids_database_dir.absolute() if args.bids_database_dir else None
    if database_dir is not None and _is_within(database_dir, bids_dir):
        raise UsageError(f"--bids-database-dir {database_dir} is inside BIDS_DIR; choose one outside it")
    if _is_within(work_dir, output_dir):
        LOGGER.warning(
            "the work directory %s is inside OUTPUT_DIR: its scratch files will sit in the derivatives "
            "dataset; prefer a work directory outside it",
            work_dir,
        )

    reference_image = args.reference_image.absolute() if args.reference_image else None
    if reference_image is not None and reference_image.is_dir():
        raise BadDataError(f"--reference-image {reference_image} is a directory; give the path of a NIfTI file")
    if reference_image is not None and not reference_image.is_file():
        raise MissingInputError(f"--reference-image {reference_image} does not exist")
    if level == "participant" and args.target_site is None and reference_image is None:
        raise UsageError("the participant level needs --target-site SITE or --reference-image FILE")
    if level == "train" and reference_image is not None:
        LOGGER.warning("--reference-image only applies to the participant level; ignored")
    if level == "group" and (args.target_site is not None or reference_image is not None):
        LOGGER.warning("--target-site/--reference-image only apply to the participant and train levels; ignored")
    if args.sloppy and level != "group":
        LOGGER.warning("--sloppy: low-quality preprocessing for testing; the outputs are not fit for analysis")

    filter_file = args.bids_filter_file.absolute() if args.bids_filter_file else None
    bids_filters = load_bids_filters(filter_file)

    nprocs = args.nprocs or default_nprocs()
    omp_nthreads = args.omp_nthreads or min(8, nprocs)
    if omp_nthreads > nprocs:
        LOGGER.warning("--omp-nthreads %d is more than --nprocs %d", omp_nthreads, nprocs)
    plugin, plugin_args = "MultiProc", dict(_DEFAULT_PLUGIN_ARGS)
    use_plugin = args.use_plugin.absolute() if args.use_plugin else None
    if use_plugin is not None:
        plugin, plugin_args = load_plugin_file(use_plugin)
    plugin_args.setdefault("n_procs", nprocs)
    if args.mem_gb is not None:
        plugin_args.setdefault("memory_gb", args.mem_gb)

    model, model_source = resolve_model(args.model, output_dir, level,
                                        add_prototypes=bool(getattr(args, "add_site_prototypes", False)))
    if model_source == "argument" and level != "train" and not model.is_dir():
        raise MissingInputError(f"--model {model} does not exist (give a model bundle directory)")
    if model_source == "demo" and level == "participant":
        LOGGER.warning(
            "no --model and no trained model in %s: using the bundled demo model (a small model trained "
            "on simulated site effects, for trying the app, not for research results)",
            output_dir / "models" / "hcld",
        )

    execution = ExecutionConfig(
        bids_dir=bids_dir,
        output_dir=output_dir,
        analysis_level=level,
        work_dir=work_dir,
        participant_label=list(dict.fromkeys(args.participant_label or [])),
        session_label=list(dict.fromkeys(args.session_label or [])),
        bids_filters=bids_filters,
        bids_filter_file=filter_file,
        bids_database_dir=database_dir,
        skip_bids_validation=args.skip_bids_validation,
        boilerplate_only=args.boilerplate_only,
        reports_only=args.reports_only,
        verbosity=args.verbose,
    )
    nipype = NipypeConfig(
        nprocs=nprocs,
        omp_nthreads=omp_nthreads,
        mem_gb=args.mem_gb,
        plugin=plugin,
        plugin_args=plugin_args,
        use_plugin=use_plugin,
        stop_on_first_crash=args.stop_on_first_crash,
    )
    workflow = WorkflowConfig(
        model=model,
        model_source=model_source,
        target_site=args.target_site,
        reference_image=reference_image,
        site_column=args.site_column,
        device=args.device,
        output_spaces=parse_output_spaces(args.output_spaces),
        ddim_inversion_steps=args.ddim_inversion_steps,
        ddim_sampling_steps=args.ddim_sampling_steps,
        harmonization_strength=args.harmonization_strength,
        random_seed=args.random_seed,
        sloppy=args.sloppy,
    )
    training = TrainingConfig(
        **{name: getattr(args, name) for name in TrainingConfig.__dataclass_fields__ if hasattr(args, name)}
    )
    return Config(execution=execution, nipype=nipype, workflow=workflow, training=training)


def prepare_directories(config: Config) -> None:
    """Create OUTPUT_DIR, its logs/ and the work directory, and prove they are writable (else 73)."""
    execution = config.execution
    for label, path in (
        ("OUTPUT_DIR", execution.output_dir),
        ("OUTPUT_DIR/logs", execution.log_dir),
        ("work directory", execution.work_dir),
    ):
        try:
            path.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=path):
                pass
        except OSError as err:
            raise CannotCreateOutputError(
                f"cannot create or write {label} {path} ({err.strerror or err}); choose a writable location"
            ) from None


def collect_inputs(config: Config):
    """Validate BIDS_DIR, open its index, and return the selected T1w images with their sites."""
    from ..bids.layout import collect_t1w, open_layout
    from ..bids.sites import resolve_sites
    from ..bids.validation import check_dataset_description, validate_bids

    execution = config.execution
    # a broken file ends the run even with --skip-bids-validation (16); a missing one only without it
    check_dataset_description(execution.bids_dir, strict=not execution.skip_bids_validation)
    pybids_validate = False
    if not execution.skip_bids_validation:
        how = validate_bids(
            execution.bids_dir,
            report_path=execution.log_dir / f"bids-validator-{execution.run_uuid}.json",
            cache_dir=execution.work_dir / "bids_validation",
        )
        pybids_validate = how == "pybids"
    layout = open_layout(
        execution.bids_dir,
        database_dir=execution.bids_database_dir,
        work_dir=execution.work_dir,
        validate=pybids_validate,
    )
    records = collect_t1w(
        layout,
        participant_label=execution.participant_label,
        session_label=execution.session_label,
        bids_filters=execution.bids_filters,
    )
    records = resolve_sites(records, execution.bids_dir, site_column=config.workflow.site_column)
    LOGGER.info(
        "%d T1w image(s) of %d participant(s) from %d site(s)",
        len(records),
        len({r.subject for r in records}),
        len({r.site for r in records}),
    )
    return records


def dispatch(config: Config, records) -> int:
    """Run the analysis level through :func:`hcld_bids.levels.run_level`."""
    level = config.execution.analysis_level
    try:
        from ..levels import run_level
    except ModuleNotFoundError as err:
        if err.name == "hcld_bids.levels":
            raise HCLDError(f"the {level} level is not available in this build") from None
        raise
    code = run_level(config, records)
    return 0 if code is None else int(code)


def run(config: Config) -> int:
    """Everything after argument checks; returns the exit code (errors raise HCLDError)."""
    from ..bids.derivatives import init_derivatives_dataset

    prepare_directories(config)
    saved = config.save()
    with _run_log(config):
        LOGGER.info("Config saved to %s", saved[-1])
        execution = config.execution
        if execution.analysis_level in ("participant", "train") and not (execution.boilerplate_only
                                                                          or execution.reports_only):
            from ..levels.execution import start_worker_server

            # the workers' imports (ANTsPy, torch, nipype) run in the fork server while this process indexes
            # the dataset, opens the model and builds the graph
            start_worker_server(config)
        records = collect_inputs(config)
        if config.execution.analysis_level in ("participant", "train"):
            try:
                init_derivatives_dataset(config.execution.output_dir, config.execution.bids_dir)
            except OSError as err:
                raise output_error(err, "OUTPUT_DIR") from None
        return dispatch(config, records)


class _ConsoleFormatter(logging.Formatter):
    """``hcld-bids: <message>`` for progress and summary lines, ``hcld-bids: LEVEL: <message>`` otherwise."""

    def format(self, record):
        message = super().format(record)
        if record.name.startswith(PROGRESS_LOGGER):
            return f"{PROG}: {message}"
        return f"{PROG}: {record.levelname}: {message}"


#: Logger of the progress and summary lines every run prints (:mod:`hcld_bids.levels.progress`).
PROGRESS_LOGGER = "hcld_bids.progress"


@contextlib.contextmanager
def _logging_to_stderr(verbosity: int):
    """Send hcld_bids log messages to stderr for the duration of a run, then restore the previous setup.

    Progress and summary lines always; other messages from WARNING by default, INFO with -v, DEBUG with -vv.
    nipype's messages reach the console only with -v (they always go to the run's log file, see
    :func:`_run_log`). Library warnings (deprecations, pybids notices) are shown only with -vv. Restoring
    matters when main() is called in-process (tests).
    """
    level = logging.WARNING if verbosity == 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_ConsoleFormatter("%(message)s"))
    handler.addFilter(lambda record: record.levelno >= level or record.name.startswith(PROGRESS_LOGGER))
    loggers = [logging.getLogger("hcld_bids"), logging.getLogger("py.warnings"), logging.getLogger("nipype")]
    saved = [(lg, lg.handlers[:], lg.level, lg.propagate) for lg in loggers]
    loggers[0].handlers[:] = [handler]
    loggers[0].setLevel(logging.DEBUG if verbosity >= 2 else logging.INFO)
    loggers[0].propagate = False
    loggers[1].handlers[:] = [handler] if verbosity >= 2 else [logging.NullHandler()]
    loggers[1].propagate = False
    if verbosity == 0:  # nipype's console handler (stdout) is left out; its messages go to the log file
        loggers[2].handlers[:] = [h for h in loggers[2].handlers if type(h) is not logging.StreamHandler]
    logging.captureWarnings(True)
    try:
        yield
    finally:
        logging.captureWarnings(False)
        for logger, handlers, old_level, propagate in saved:
            logger.handlers[:] = handlers
            logger.setLevel(old_level)
            logger.propagate = propagate


@contextlib.contextmanager
def _run_log(config: Config):
    """Copy every message of the run (ours at INFO, nipype's at its own levels) into ``logs/run-<run id>.log``."""
    verbosity = config.execution.verbosity
    try:
        handler = logging.FileHandler(config.execution.log_file, encoding="utf-8", delay=True)
    except OSError:  # the log file is a convenience: a run never fails for want of it
        yield
        return
    handler.setLevel(logging.DEBUG if verbosity >= 2 else logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
    loggers = [logging.getLogger("hcld_bids"), logging.getLogger("nipype")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield
    except BaseException as err:  # the one error line of the console, in the log too
        message = err.message if isinstance(err, HCLDError) else f"{type(err).__name__}: {err}"
        handler.handle(logging.LogRecord("hcld_bids", logging.ERROR, __file__, 0, "run ended with an error: %s",
                                         (message,), None))
        raise
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
        handler.close()


def _write_crash_file(config: Config | None, text: str) -> Path | None:
    """Save a traceback: OUTPUT_DIR/logs, else the work directory, else the system temporary directory."""
    candidates = []
    name = "crash.txt"
    if config is not None:
        candidates = [config.execution.log_dir, config.execution.work_dir]
        name = f"crash-{config.execution.run_uuid}.txt"
    candidates.append(Path(tempfile.gettempdir()))
    for directory in candidates:
        try:
            directory.mkdir(parents=True, exist_ok=True)
            if config is None:
                fd, path = tempfile.mkstemp(prefix="hcld-bids-crash-", suffix=".txt", dir=directory)
                with os.fdopen(fd, "w") as stream:
                    stream.write(text)
                return Path(path)
            path = directory / name
            path.write_text(text)
            return path
        except OSError:
            continue
    return None


def _error_line(message: str) -> str:
    return f"{PROG}: error: {' '.join(message.split())}"


def main(argv: list[str] | None = None) -> int:
    """Run hcld-bids with ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version, usage errors (64)
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    verbosity = args.verbose
    with _logging_to_stderr(verbosity):
        return _run_reporting_errors(args, verbosity)


def _exit_at_once(signum, frame) -> None:
    """SIGINT handler after the first Ctrl-C: leave now, silently (the interruption was reported)."""
    os._exit(130)


def _exit_on_next_interrupt() -> None:
    """After an interruption was reported the process shuts down (it stops its worker pool, whose workers
    finish the node they run if the Ctrl-C did not reach them); a second Ctrl-C then ends it at once instead
    of printing the traceback of the wait it interrupted. Workers left behind end on their own
    (:func:`hcld_bids.levels.execution._exit_when_orphaned`)."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _exit_at_once)


def _run_reporting_errors(args: argparse.Namespace, verbosity: int) -> int:
    """Build the config and run; turn every exception into one line on stderr and an exit code."""
    config = None
    try:
        config = build_config(args)
        return run(config)
    except HCLDError as err:
        if verbosity:
            traceback.print_exc(file=sys.stderr)
        print(_error_line(err.message), file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(_error_line("interrupted"), file=sys.stderr)
        _exit_on_next_interrupt()
        return 130
    except OSError as err:
        if err.errno not in OUTPUT_ERRNOS:
            return _report_crash(config, err, verbosity)
        if verbosity:
            traceback.print_exc(file=sys.stderr)
        error = output_error(err, "OUTPUT_DIR or work directory")
        print(_error_line(error.message), file=sys.stderr)
        return error.exit_code
    except Exception as err:  # a bug: one line for the user, the traceback in a file
        return _report_crash(config, err, verbosity)


def _report_crash(config: Config | None, err: Exception, verbosity: int) -> int:
    """An unexpected exception (called inside its ``except``): one line naming the crash file, exit code 1."""
    text = traceback.format_exc()
    crash_file = _write_crash_file(config, text)
    if verbosity:
        print(text, file=sys.stderr, end="")
    where = f"; traceback in {crash_file}" if crash_file else ""
    print(_error_line(f"unexpected {type(err).__name__}: {err}{where}"), file=sys.stderr)
    return 1
