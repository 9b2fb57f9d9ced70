"""The train level: preprocess every selected T1w, train stage 1 (autoencoder) and stage 2 (conditional
latent diffusion), compute one style prototype per site, write a model bundle.

Also the prototype-only mode (``--add-site-prototypes``): compute the prototypes of the selected images'
sites with an existing bundle and write a copy of it with those sites added, without any training.

Everything resumes: preprocessing results are reused from the work directory (nipype), each training stage
continues from its last checkpoint in ``<work dir>/train/``. Under ``torchrun`` the first process
preprocesses while the others wait; every process trains its share of each batch (DDP); the first writes
the bundle. The preprocessing graph is :func:`hcld_bids.workflows.train.init_train_preproc_wf`.
"""

from __future__ import annotations

import logging
import shutil
import sys
import time

import numpy as np

from ..errors import BadDataError, HCLDError, NoDataError
from ..reports.metrics import site_histograms  # noqa: F401 - also imported from here by scripts
from .progress import PROGRESS, Progress, print_summary

LOGGER = logging.getLogger("hcld_bids")

#: Template and resolution of models trained by default.
DEFAULT_TEMPLATE = "MNI152NLin6Asym"


def preprocess_for_training(config, records, *, template, resolution, grid, registration):
    """Run the preprocessing (reusing the work directory) and load the model-grid volumes and masks."""
    from ..workflows.train import init_train_preproc_wf
    from .execution import remove_old_crash_files, run_workflow

    workflow = init_train_preproc_wf(config, records, template=template, resolution=resolution, grid=grid,
                                     registration=registration)
    PROGRESS.info("preprocessing %d T1w image(s) of %d participant(s)", len(records),
                  len({r.subject for r in records}))
    run_workflow(workflow, config, records, progress=Progress(records, level="train"))
    remove_old_crash_files(config, records)
    return load_training_inputs(config, records)


def load_training_inputs(config, records):
    """The model-grid volumes (float32, [0, 1]) and brain masks (bool) exported by the preprocessing."""
    import nibabel as nib

    from ..workflows.train import _label, training_inputs_dir

    volumes, masks = [], []
    for record in records:
        label = _label(record)
        volumes.append(np.asarray(nib.load(training_inputs_dir(config) / f"{label}_t1w.nii.gz").dataobj,
                                  dtype=np.float32))
        masks.append(np.asarray(nib.load(training_inputs_dir(config) / f"{label}_mask.nii.gz").dataobj) > 0)
    return volumes, masks


def _data_summary(records, sites) -> dict:
    return {
        "n_images": len(records),
        "n_participants": len({r.subject for r in records}),
        "sites": {site: sum(1 for s in sites if s == site) for site in sorted(set(sites))},
    }


def check_new_sites(records, model) -> None:
    """Prototypes may be added for new sites (or replace added ones), never for a site the networks were
    trained on: a site of the images whose label is a training site of the model is bad data (65), named
    with both spellings, since the two would silently become one site."""
    trained = model.trained_sites
    for record in records:
        if record.site in trained:
            written = f"{record.site_value!r} ({record.site_source})" if record.site_value != record.site else (
                f"{record.site!r} ({record.site_source})")
            raise BadDataError(
                f"the site {written} of {record.relpath} has the label {record.site!r}, which is a site the model "
                f"{model.path} was trained on ({trained[record.site]} images): --add-site-prototypes would make "
                f"the two one site; give these images a site name of their own, or leave them out"
            )


def site_targets(volumes, masks, sites) -> dict:
    """What a bundle's manifest stores per site for the calibrations of the harmonizer:
    ``{site: {"intensity_histogram": ..., "power_spectrum": ...}}``."""
    from ..model.spectrum import site_spectra

    hists = site_histograms(volumes, masks, sites)
    spectra = site_spectra(volumes, masks, sites)
    return {s: {"intensity_histogram": hists[s], "power_spectrum": spectra[s]} for s in hists}


def add_site_prototypes(config, records) -> int:
    """Prototype-only mode: copy ``--model`` to OUTPUT_DIR/models/hcld with the selected sites' prototypes."""
    from ..config import TRAINED_MODEL_SUBDIR
    from ..model.bundle import add_prototypes
    from ..model.errors import ModelError
    from .execution import check_t1w_images
    from .model import model_error, open_model

    model = open_model(config.workflow.model, source=config.workflow.model_source)
    dest = config.execution.output_dir / TRAINED_MODEL_SUBDIR
    check_new_sites(records, model)
    check_t1w_images(records)
    volumes, masks = preprocess_for_training(config, records, template=model.template, resolution=model.resolution,
                                             grid=model.grid, registration=model.registration)
    sites = [r.site for r in records]
    by_site = {site: [v for v, s in zip(volumes, sites) if s == site] for site in sorted(set(sites))}
    targets = site_targets(volumes, masks, sites)
    if dest.resolve() != model.path.resolve():
        tmp = dest.with_name(f".{dest.name}.copy-{config.execution.run_uuid}")
        shutil.copytree(model.path, tmp)
        if dest.exists():
            shutil.rmtree(dest)
        tmp.replace(dest)
    added = {"added_without_training": True, "bids_dir": str(config.execution.bids_dir),
             "added": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    subjects = {site: sorted({r.subject for r in records if r.site == site}) for site in by_site}
    try:
        # the networks' training record (manifest["training"]["data"]) is kept as it is: these sites are
        # listed apart from it, each flagged added_without_training
        bundle = add_prototypes(dest, by_site, overwrite_sites=True,
                                site_info={s: {**targets[s], "n_images": len(by_site[s]),
                                               "participants": subjects[s], **added} for s in by_site})
    except ModelError as err:
        raise model_error(err) from None
    from ..manifest import describe_sites

    print_summary(f"train level (--add-site-prototypes) finished: style prototypes of {', '.join(by_site)} added "
                  f"to {dest}, without training", [
                      ("info", f"the model is now {describe_sites(bundle.manifest)}"),
                      ("info", f"harmonize toward one of them: hcld-bids BIDS_DIR {config.execution.output_dir} "
                               f"participant --target-site {next(iter(by_site))}")])
    return 0


def _stage_configs(config, volumes):
    from ..model.training import AutoencoderTrainConfig, LDMTrainConfig

    t = config.training
    progress = sys.stderr.isatty() or config.execution.verbosity > 0
    ae_arch = {"channels": tuple(t.ae_channels), "latent_channels": int(t.latent_channels),
               "norm_groups": min(8, min(t.ae_channels))}
    patch = (t.patch_size,) * 3 if t.patch_size else None
    ae = AutoencoderTrainConfig(
        autoencoder=ae_arch, epochs=t.ae_epochs, steps=t.ae_steps, batch_size=t.batch_size or 2,
        lr=t.lr_ae, disc_lr=t.lr_disc_ae, patch_size=patch, checkpoint_every=t.checkpoint_every,
        seed=config.workflow.random_seed, progress=progress,
        adv_warmup_epochs=float(t.adv_burn_in_epochs),
    )
    ldm = LDMTrainConfig(
        unet={"channels": tuple(t.unet_channels), "in_channels": 2 * int(t.latent_channels),
              "out_channels": int(t.latent_channels), "norm_groups": min(32, min(t.unet_channels)),
              "head_channels": min(64, max(t.unet_channels))},
        epochs=t.ldm_epochs, steps=t.ldm_steps, batch_size=t.batch_size or 1, grad_accum=t.grad_accum,
        lr=t.lr_ldm, disc_lr=t.lr_disc_ldm, checkpoint_every=t.checkpoint_every, seed=config.workflow.random_seed,
        progress=progress, noise_weight=t.weight_noise, content_weight=t.weight_content,
        style_weight=t.weight_style, adv_weight=t.weight_adversarial, grad_weight=t.weight_gradient,
        adv_burn_in_epochs=float(t.adv_burn_in_epochs), prototype_condition_prob=t.prototype_condition_prob,
        target_site=config.workflow.target_site,
    )
    return ae, ldm


def run_train(config, records) -> int:
    """Train a model bundle on the selected T1w images (see the module docstring)."""
    from ..config import TRAINED_MODEL_SUBDIR
    from ..model.bundle import save_bundle
    from ..model.errors import ModelError
    from ..model.training import train_autoencoder, train_ldm
    from ..model.training.distributed import setup
    from ..preproc.grid import model_grid
    from ..preproc.spec import preprocessing_spec
    from ..templates import check_templates, is_shipped
    from .execution import check_t1w_images
    from .model import model_error, resolve_torch_device

    if config.execution.boilerplate_only:
        from .execution import write_boilerplate

        write_boilerplate(config, None)
        return 0
    import torch

    # training and prototype encoding run in this process: as many torch threads as --omp-nthreads
    torch.set_num_threads(max(1, int(config.nipype.omp_nthreads)))
    if config.training.add_site_prototypes:
        return add_site_prototypes(config, records)
    if len(records) < 2:
        raise NoDataError(f"training needs at least 2 T1w images; {len(records)} selected in "
                          f"{config.execution.bids_dir}")
    template, resolution = DEFAULT_TEMPLATE, int(config.training.template_resolution)
    grid = model_grid(template, resolution)
    template_files = check_templates(template, resolution)
    spec = preprocessing_spec(template, resolution)
    check_t1w_images(records)
    sites = [r.site for r in records]
    if config.workflow.target_site:
        from ..bids.sites import check_target_site

        config.workflow.target_site = check_target_site(config.workflow.target_site, sites, add_hint=False)
    if len(set(sites)) < 2:
        LOGGER.warning("all training images come from one site (%s): the model can only learn that site's style",
                       sites[0])

    ctx = setup(resolve_torch_device(config.workflow.device))
    device = ctx.device
    if ctx.is_main:
        volumes, masks = preprocess_for_training(config, records, template=template, resolution=resolution,
                                                 grid=grid, registration=spec["registration"])
    ctx.barrier()
    if not ctx.is_main:
        volumes, masks = load_training_inputs(config, records)
    ae_cfg, ldm_cfg = _stage_configs(config, volumes)
    if not config.training.resume:
        for stage in ("stage1", "stage2"):
            if ctx.is_main:
                shutil.rmtree(config.execution.work_dir / "train" / stage, ignore_errors=True)
        ctx.barrier()
    start = time.time()
    try:
        PROGRESS.info("training stage 1 (autoencoder) on %d image(s) from %d site(s)", len(volumes), len(set(sites)))
        ae = train_autoencoder(volumes, ae_cfg, config.execution.work_dir / "train" / "stage1", device=device)
        PROGRESS.info("training stage 2 (conditional latent diffusion)")
        ldm = train_ldm(volumes, sites, ldm_cfg, config.execution.work_dir / "train" / "stage2",
                        autoencoder=ae.autoencoder, scale_factor=ae.scale_factor, masks=masks, device=device)
    except ModelError as err:
        raise model_error(err) from None
    if not ctx.is_main:
        return 0
    if not (ae.complete and ldm.complete):
        raise HCLDError("training stopped before its last step; run the same command again to continue")

    dest = config.execution.output_dir / TRAINED_MODEL_SUBDIR
    targets = site_targets(volumes, masks, sites)
    summary = _data_summary(records, sites)
    manifest = {
        "name": f"hcld-{config.execution.run_uuid[:15]}",
        "preprocessing": spec,
        "sites": {s: {"n_images": summary["sites"][s], **targets[s]} for s in summary["sites"]},
        "training": {
            "command": " ".join(sys.argv),
            "bids_dir": str(config.execution.bids_dir),
            "data": summary,
            "subjects": sorted({r.subject for r in records}),
            "stage1": ae_cfg.to_dict(),
            "stage2": ldm_cfg.to_dict(),
            "target_site": config.workflow.target_site,  # None: any-to-any
            "world_size": ctx.world_size,
            "device": str(device),
            "wall_time_seconds_this_run": round(time.time() - start, 1),
        },
    }
    try:
        save_bundle(dest, ae.autoencoder, ldm.unet, ae.scale_factor, ldm.prototypes, manifest,
                    schedule=ldm.schedule, overwrite=True)
    except ModelError as err:
        raise model_error(err) from None
    from .execution import write_boilerplate

    citation = write_boilerplate(config, manifest, device=str(device),
                                 template_source="shipped" if is_shipped(template_files["T1w"]) else "templateflow")
    from ..manifest import describe_sites

    print_summary(f"train level finished: model bundle written to {dest}", [
        ("info", f"the model is {describe_sites(manifest)}"),
        ("info", f"methods text: {citation}; log: {config.execution.log_file}"),
        ("info", f"harmonize: hcld-bids BIDS_DIR {config.execution.output_dir} participant --target-site SITE")])
    return 0
