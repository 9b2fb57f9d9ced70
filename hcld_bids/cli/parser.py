"""The command-line parser of hcld-bids (it only parses; :mod:`hcld_bids.cli.run` acts on the result).

Spelling follows fMRIPrep/MRIQC where a flag exists there. Usage errors exit with 64 (BIDS execution
specification), not argparse's 2. The analysis level is checked later (:func:`hcld_bids.cli.run.build_config`)
so that an unknown level exits with 17.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import sys
from pathlib import Path

from .._version import __version__
from ..config import ANALYSIS_LEVELS, DEFAULT_SITE_COLUMN, TrainingConfig, WorkflowConfig
from ..errors import UsageError

PROG = "hcld-bids"

_LABEL_RE = re.compile(r"^[a-zA-Z0-9]+$")
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
_MEM_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]?)(i?)(b?)\s*$", re.IGNORECASE)
# Size of one unit in GB, decimal (K, M, G, T) and binary (Ki, Mi, Gi, Ti).
_MEM_UNITS_GB = {
    ("", ""): 1.0,
    ("k", ""): 1e-6,
    ("m", ""): 1e-3,
    ("g", ""): 1.0,
    ("t", ""): 1e3,
    ("k", "i"): 2**10 / 1e9,
    ("m", "i"): 2**20 / 1e9,
    ("g", "i"): 2**30 / 1e9,
    ("t", "i"): 2**40 / 1e9,
}


def parse_label(value: str, prefix: str) -> str:
    """``"sub-01"`` or ``"01"`` -> ``"01"``; anything but letters and digits is a usage error."""
    label = value[len(prefix) :] if value.startswith(prefix) else value
    if not _LABEL_RE.match(label):
        raise argparse.ArgumentTypeError(
            f"invalid label {value!r}: use letters and digits only, with or without '{prefix}'"
        )
    return label


def _participant_label(value: str) -> str:
    return parse_label(value, "sub-")


def _session_label(value: str) -> str:
    return parse_label(value, "ses-")


def parse_mem_gb(value: str) -> float:
    """Memory size with optional unit -> GB. ``"8"``, ``"8G"``, ``"8GB"``, ``"8000M"``, ``"16GiB"``."""
    match = _MEM_RE.match(str(value))
    if match is None or (match.group(2) == "" and match.group(3) != ""):
        raise argparse.ArgumentTypeError(
            f"invalid memory size {value!r}: use a number of GB or a unit, e.g. 8G, 8GB, 8000M, 16GiB"
        )
    number, unit, binary = float(match.group(1)), match.group(2).lower(), match.group(3).lower()
    gigabytes = number * _MEM_UNITS_GB[(unit, binary)]
    if gigabytes <= 0:
        raise argparse.ArgumentTypeError(f"invalid memory size {value!r}: must be more than zero")
    return gigabytes


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"invalid value {value!r}: expected a whole number >= 1")
    return number


def _non_negative_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number < 0:
        raise argparse.ArgumentTypeError(f"invalid value {value!r}: expected a whole number >= 0")
    return number


#: Largest --random-seed: the generators of numpy and torch take seeds of 32 bits.
MAX_SEED = 2 ** 32 - 1


def _seed(value: str) -> int:
    number = _non_negative_int(value)
    if number > MAX_SEED:
        raise argparse.ArgumentTypeError(f"invalid value {value!r}: expected a whole number from 0 to {MAX_SEED}")
    return number


def _site_name(value: str) -> str:
    if not value.strip():
        raise argparse.ArgumentTypeError("an empty site name: give a site the model knows")
    return value


def _positive_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not number > 0 or number == float("inf"):
        raise argparse.ArgumentTypeError(f"invalid value {value!r}: expected a number > 0")
    return number


def _non_negative_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not number >= 0 or number == float("inf"):
        raise argparse.ArgumentTypeError(f"invalid value {value!r}: expected a number >= 0")
    return number


def _probability(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {value!r}") from None
    if not 0.0 <= number <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {value!r}")
    return number


def _strength(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not 0.0 < number <= 1.0:
        raise argparse.ArgumentTypeError(f"invalid strength {value!r}: expected a number in (0, 1], e.g. 0.3")
    return number


def _patch_size(value: str) -> int:
    number = _positive_int(value)
    if number % 16:
        raise argparse.ArgumentTypeError(f"invalid patch size {value!r}: must be a multiple of 16")
    return number


def _device(value: str) -> str:
    if not _DEVICE_RE.match(value):
        raise argparse.ArgumentTypeError(f"invalid device {value!r}: use auto, cpu, cuda or cuda:N")
    return value


def _site_column(value: str) -> str:
    if not value.strip() or "\t" in value:
        raise argparse.ArgumentTypeError(f"invalid column name {value!r}")
    return value


class _HelpFormatter(argparse.HelpFormatter):
    """Shows a default in the help only when there is a meaningful one (not None/False)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (
            "default" not in text
            and action.option_strings
            and action.default is not None
            and action.default is not False
            and action.default != argparse.SUPPRESS
            and not isinstance(action, (argparse._VersionAction, argparse._HelpAction, argparse._CountAction))
        ):
            text += " (default: %(default)s)"
        return text


class HCLDArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line and exit with 64."""

    def error(self, message: str):
        self.exit(UsageError.exit_code, f"{self.prog}: error: {message}{self._suggestion(message)} "
                                        f"(see '{self.prog} --help')\n")

    def _suggestion(self, message: str) -> str:
        """`` (did you mean --target-site?)`` for the misspelled flags of an "unrecognized arguments" error."""
        if not message.startswith("unrecognized arguments:"):
            return ""
        flags = sorted(option for action in self._actions if action.help != argparse.SUPPRESS
                       for option in action.option_strings if option.startswith("--"))
        hints = []
        for word in message.split(":", 1)[1].split():
            if not word.startswith("-"):
                continue
            flag = word.split("=", 1)[0]
            close = _close_flags(flag, flags)
            if close:
                hints.append((flag, " or ".join(close)))
        if len(hints) == 1:
            return f" (did you mean {hints[0][1]}?)"
        return f" (did you mean {'; '.join(f'{close} for {flag}' for flag, close in hints)}?)" if hints else ""


def _close_flags(flag: str, flags: list[str]) -> list[str]:
    """Flags the user may have meant by ``flag``: the same after normalizing case and underscores, those that
    hold all its words (``--ddim-steps``: both DDIM step flags), else the closest spelling."""
    spelled = "--" + flag.lstrip("-").replace("_", "-").lower()
    if spelled in flags:
        return [spelled] if spelled != flag else []
    words = set(spelled[2:].split("-"))
    holding = [f for f in flags if words <= set(f[2:].split("-"))]
    if 1 <= len(holding) <= 3:
        return holding
    return difflib.get_close_matches(spelled, flags, n=1, cutoff=0.7)


def default_nprocs() -> int:
    """CPUs this process may use (its affinity mask, which batch schedulers set)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def build_parser() -> HCLDArgumentParser:
    """Build the hcld-bids argument parser."""
    workflow_defaults = WorkflowConfig()
    training_defaults = TrainingConfig()
    parser = HCLDArgumentParser(
        prog=PROG,
        description=(
            "Harmonize T1-weighted brain MRI across scanners and sites with 3D conditional latent "
            "diffusion (HCLD). A BIDS App: train a model, harmonize each participant, summarize the group."
        ),
        formatter_class=_HelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("bids_dir", type=Path, metavar="BIDS_DIR", help="the root of the input BIDS dataset")
    parser.add_argument(
        "output_dir",
        type=Path,
        metavar="OUTPUT_DIR",
        help="the root of the output derivatives dataset: outside BIDS_DIR, or BIDS_DIR/derivatives/<name>",
    )
    # Checked after parsing (exit code 17 for an unknown level, not the 64 of a usage error).
    parser.add_argument(
        "analysis_level",
        metavar="{" + ",".join(ANALYSIS_LEVELS) + "}",
        help="train: fit a model on the selected T1w images; participant: harmonize each participant; "
        "group: group QC report from what participant runs wrote",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument(
        "-v",
        "--verbose",
        dest="verbose",
        action="count",
        default=0,
        help="more messages; with -v a failure also prints its Python traceback",
    )

    bids = parser.add_argument_group("Selecting data (BIDS)")
    bids.add_argument(
        "--participant-label",
        dest="participant_label",
        nargs="+",
        type=_participant_label,
        metavar="LABEL",
        help="participants to process, with or without 'sub-' (default: all)",
    )
    bids.add_argument(
        "--session-label",
        dest="session_label",
        nargs="+",
        type=_session_label,
        metavar="LABEL",
        help="sessions to process, with or without 'ses-' (default: all)",
    )
    bids.add_argument(
        "--bids-filter-file",
        dest="bids_filter_file",
        type=Path,
        metavar="FILE",
        help='JSON file of PyBIDS filters for the T1w query, e.g. {"t1w": {"acquisition": "mprage"}}',
    )
    bids.add_argument(
        "--bids-database-dir",
        dest="bids_database_dir",
        type=Path,
        metavar="DIR",
        help="directory of a PyBIDS index (SQLite) to reuse, or where to build one (default: in the work dir)",
    )
    bids.add_argument(
        "--skip-bids-validation",
        dest="skip_bids_validation",
        action="store_true",
        help="do not run bids-validator-deno on BIDS_DIR",
    )

    # fMRIPrep also accepts these spellings; keep them working without cluttering the help.
    bids.add_argument("--participant_label", dest="participant_label", nargs="+", type=_participant_label,
                      help=argparse.SUPPRESS)
    bids.add_argument("--session_label", dest="session_label", nargs="+", type=_session_label,
                      help=argparse.SUPPRESS)
    bids.add_argument("--skip_bids_validation", dest="skip_bids_validation", action="store_true",
                      help=argparse.SUPPRESS)

    harmonize = parser.add_argument_group("Harmonization")
    target = harmonize.add_mutually_exclusive_group()
    target.add_argument(
        "--target-site",
        dest="target_site",
        type=_site_name,
        metavar="SITE",
        help="harmonize toward this site's style prototype in the model (participant level); at the train "
        "level: train toward this site only, as in the paper (default: any site toward any site)",
    )
    target.add_argument(
        "--reference-image",
        dest="reference_image",
        type=Path,
        metavar="FILE",
        help="harmonize toward the style of this T1w image (participant level)",
    )
    harmonize.add_argument(
        "--site-column",
        dest="site_column",
        type=_site_column,
        metavar="NAME",
        help=f"column of participants.tsv or sessions.tsv that holds the site (default: {DEFAULT_SITE_COLUMN}; "
        "without it, sites come from the scanner fields of the image sidecars)",
    )
    harmonize.add_argument(
        "--model",
        type=Path,
        metavar="DIR",
        help="model bundle directory (default: OUTPUT_DIR/models/hcld when train wrote one, "
        "otherwise the bundled demo model); for train: where to write the bundle",
    )
    harmonize.add_argument(
        "--device",
        type=_device,
        default=workflow_defaults.device,
        metavar="{auto,cpu,cuda,cuda:N}",
        help="where the networks run; auto: the first CUDA GPU if there is one, else the CPU",
    )
    harmonize.add_argument(
        "--output-spaces",
        dest="output_spaces",
        nargs="+",
        metavar="SPACE",
        help="spaces of the harmonized outputs; the model's template space is always written, "
        "T1w adds the harmonized image resampled to the native T1w space",
    )
    harmonize.add_argument(
        "--harmonization-strength",
        dest="harmonization_strength",
        type=_strength,
        default=workflow_defaults.harmonization_strength,
        metavar="S",
        help="how far the diffusion model moves each image toward the target, in (0, 1]: the fraction of the "
        "diffusion the image is taken into before it is regenerated (higher: more of the target's style, "
        "less of the source's fine structure; default: the model's own setting)",
    )
    harmonize.add_argument(
        "--ddim-inversion-steps",
        dest="ddim_inversion_steps",
        type=_positive_int,
        default=workflow_defaults.ddim_inversion_steps,
        metavar="N",
        help="DDIM steps from the image latent to noise, for models whose inference inverts "
        "(default: the model's own setting)",
    )
    harmonize.add_argument(
        "--ddim-sampling-steps",
        dest="ddim_sampling_steps",
        type=_positive_int,
        default=workflow_defaults.ddim_sampling_steps,
        metavar="N",
        help="DDIM steps from noise back to the harmonized latent (default: the model's own setting)",
    )
    harmonize.add_argument(
        "--random-seed",
        dest="random_seed",
        type=_seed,
        default=workflow_defaults.random_seed,
        metavar="N",
        help="seed of every random number generator (results are deterministic for a seed)",
    )

    training = parser.add_argument_group("Training (train level)")
    training.add_argument("--ae-epochs", type=_positive_int, default=training_defaults.ae_epochs,
                          metavar="N", help="epochs of stage 1 (autoencoder)")
    training.add_argument("--ldm-epochs", type=_positive_int, default=training_defaults.ldm_epochs,
                          metavar="N", help="epochs of stage 2 (conditional latent diffusion)")
    training.add_argument("--batch-size", type=_positive_int, default=None, metavar="N",
                          help="images per batch (default: 2 for the autoencoder, 1 for the cLDM)")
    training.add_argument("--grad-accum", type=_positive_int, default=training_defaults.grad_accum,
                          metavar="N", help="batches accumulated per optimizer step of the cLDM")
    training.add_argument("--lr-ae", type=_positive_float, default=training_defaults.lr_ae,
                          metavar="LR", help="learning rate of the autoencoder")
    training.add_argument("--lr-disc-ae", type=_positive_float, default=training_defaults.lr_disc_ae,
                          metavar="LR", help="learning rate of the autoencoder's discriminator")
    training.add_argument("--lr-ldm", type=_positive_float, default=training_defaults.lr_ldm,
                          metavar="LR", help="learning rate of the diffusion UNet")
    training.add_argument("--lr-disc-ldm", type=_positive_float, default=training_defaults.lr_disc_ldm,
                          metavar="LR", help="learning rate of the latent discriminator")
    training.add_argument("--adv-burn-in-epochs", type=_non_negative_int,
                          default=training_defaults.adv_burn_in_epochs, metavar="N",
                          help="cLDM epochs before the adversarial loss is switched on")
    training.add_argument("--patch-size", type=_patch_size, default=None, metavar="N",
                          help="edge of random cubic patches for stage 1, a multiple of 16 (default: whole volumes)")
    training.add_argument("--checkpoint-every", type=_positive_int,
                          default=training_defaults.checkpoint_every, metavar="N",
                          help="optimizer steps between training checkpoints")
    training.add_argument("--resume", action=argparse.BooleanOptionalAction, default=training_defaults.resume,
                          help="continue from the last checkpoint in the work dir")
    training.add_argument("--weight-content", type=_non_negative_float,
                          default=training_defaults.weight_content, metavar="W", help="weight of the content loss")
    training.add_argument("--weight-style", type=_non_negative_float,
                          default=training_defaults.weight_style, metavar="W", help="weight of the style (Gram) loss")
    training.add_argument("--weight-adversarial", type=_non_negative_float,
                          default=training_defaults.weight_adversarial, metavar="W",
                          help="weight of the adversarial loss")
    training.add_argument("--weight-gradient", type=_non_negative_float,
                          default=training_defaults.weight_gradient, metavar="W",
                          help="weight of the image-gradient (structure) loss")
    training.add_argument("--weight-noise", type=_non_negative_float,
                          default=training_defaults.weight_noise, metavar="W", help="weight of the noise loss")
    training.add_argument("--ae-channels", type=_positive_int, nargs=3, default=training_defaults.ae_channels,
                          metavar="C", help="autoencoder channels per level (the research network: 32 64 64)")
    training.add_argument("--unet-channels", type=_positive_int, nargs=3, default=training_defaults.unet_channels,
                          metavar="C", help="diffusion UNet channels per level (the research network: 32 64 64)")
    training.add_argument("--latent-channels", type=_positive_int, default=training_defaults.latent_channels,
                          metavar="C", help="channels of the latent map")
    training.add_argument("--ae-steps", type=_positive_int, default=None, metavar="N",
                          help="optimizer steps of stage 1 (overrides --ae-epochs)")
    training.add_argument("--ldm-steps", type=_positive_int, default=None, metavar="N",
                          help="optimizer steps of stage 2 (overrides --ldm-epochs)")
    training.add_argument("--prototype-condition-prob", type=_probability,
                          default=training_defaults.prototype_condition_prob, metavar="P",
                          help="probability of conditioning stage 2 on a site prototype instead of one image")
    training.add_argument("--template-resolution", type=int, choices=(1, 2),
                          default=training_defaults.template_resolution,
                          help="TemplateFlow resolution of the model grid: 2 (2 mm, 80x96x80) or 1 (1 mm, 160x192x160)")
    training.add_argument("--add-site-prototypes", action="store_true",
                          help="no training: compute style prototypes of the selected images' sites with --model "
                               "and write that model with the new sites to OUTPUT_DIR/models/hcld")

    perf = parser.add_argument_group("Performance")
    perf.add_argument(
        "--nprocs",
        "--nthreads",
        dest="nprocs",
        type=_positive_int,
        metavar="N",
        help="processes/threads the whole run may use (default: the CPUs available to this process)",
    )
    perf.add_argument(
        "--omp-nthreads",
        dest="omp_nthreads",
        type=_positive_int,
        metavar="N",
        help="threads of each step: ANTs, and torch in harmonization and training (default: min(8, --nprocs))",
    )
    perf.add_argument(
        "--mem",
        dest="mem_gb",
        type=parse_mem_gb,
        metavar="SIZE",
        help="memory limit: steps run side by side only while their declared needs fit; a number is GB, "
        "or give a unit: 8G, 8GB, 8000M, 16GiB",
    )
    perf.add_argument(
        "--use-plugin",
        dest="use_plugin",
        type=Path,
        metavar="FILE",
        help="YAML file with a nipype plugin and its arguments, e.g. 'plugin: SLURM' and 'plugin_args: {...}'",
    )
    perf.add_argument(
        "--stop-on-first-crash",
        dest="stop_on_first_crash",
        action="store_true",
        help="stop at the first failing step instead of finishing the others",
    )

    other = parser.add_argument_group("Other options")
    other.add_argument(
        "-w",
        "--work-dir",
        dest="work_dir",
        type=Path,
        default=Path("work"),
        metavar="DIR",
        help="scratch directory for intermediate results; relative paths are from the current directory",
    )
    other.add_argument(
        "--boilerplate-only",
        dest="boilerplate_only",
        action="store_true",
        help="only write the methods boilerplate (the CITATION files in OUTPUT_DIR/logs)",
    )
    other.add_argument(
        "--reports-only",
        dest="reports_only",
        action="store_true",
        help="only (re)write the reports from existing outputs",
    )
    other.add_argument(
        "--sloppy",
        action="store_true",
        help="TESTING ONLY: low-quality preprocessing for speed (N4 with 10 iterations per level, a fast coarse "
        "affine registration); the outputs say so and are not fit for analysis",
    )
    other.add_argument("--boilerplate_only", dest="boilerplate_only", action="store_true", help=argparse.SUPPRESS)
    return parser


if __name__ == "__main__":  # pragma: no cover - convenience
    build_parser().print_help(sys.stdout)
