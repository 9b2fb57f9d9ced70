"""Participant-level outputs written without the model, for tests, benchmarks and report previews.

The reports read only files (the output contract of the participant level). This module writes such
files from real scans: each scan is resampled onto the 2 mm MNI152NLin6Asym grid (91 x 109 x 91)
without registration (the brain centre, taken a fixed distance below the top of the head, goes to the
template's brain centre), its brain mask is an ellipsoid inside the brain, and its intensities get the
percentile scaling of the participant level.
The "harmonized" image is a stand-in for the model: the brain intensities mapped monotonically onto
those of the target site (histogram matching), smoothed a little, zero outside the mask. Damaged
variants shift or erase structures so that the anatomy guard has something to catch.

Nothing here is a harmonization method; sidecars say ``"ModelName": "synthetic-fixture"``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from ..bids.atomic import atomic_path, atomic_write_json
from ..bids.derivatives import derivative_path
from . import metrics

#: The 2 mm MNI152NLin6Asym grid (TemplateFlow res-02).
GRID_SHAPE = (91, 109, 91)
GRID_AFFINE = np.array([[2.0, 0, 0, -90], [0, 2.0, 0, -126], [0, 0, 2.0, -72], [0, 0, 0, 1]])
TEMPLATE = "MNI152NLin6Asym"
RESOLUTION = "2"
#: Brain centre of the template (mm) and semi-axes (mm) of the ellipsoid used as the crude brain mask;
#: it lies inside the brain of an adult head (a little of the cortex and the cerebellum stay outside).
_BRAIN_CENTRE_MM = np.array([0.0, -18.0, 16.0])
_BRAIN_AXES_MM = np.array([62.0, 80.0, 58.0])
#: Where the brain centre is relative to the top of the head (vertex), in a scan's world frame (RAS mm).
_VERTEX_TO_BRAIN_MM = np.array([0.0, -5.0, -70.0])
DAMAGES = ("shift", "blur", "erase")


@dataclass
class ImageSpec:
    """One T1w of a synthetic participant.

    ``scan``: path of a real T1w NIfTI; ``site``: its site label; ``seed``: perturbation of the scan
    (small rigid jitter and intensity curve) so that subjects reusing a scan differ; ``damage``: one of
    :data:`DAMAGES` to corrupt the harmonized image, or ``None``; ``harmonized``: False leaves the
    image half-finished (preprocessed, no harmonized output).
    """

    subject: str
    scan: Path
    site: str
    session: str | None = None
    run: int | None = None
    seed: int = 0
    damage: str | None = None
    harmonized: bool = True
    extra: dict = field(default_factory=dict)

    @property
    def entities(self) -> dict:
        return {"subject": self.subject, "session": self.session, "run": self.run,
                "space": TEMPLATE, "resolution": RESOLUTION}


def _world_grid() -> np.ndarray:
    """World coordinates (mm) of the grid voxels, shape (3, X, Y, Z)."""
    ijk = np.indices(GRID_SHAPE, dtype=np.float64).reshape(3, -1)
    return (GRID_AFFINE[:3, :3] @ ijk + GRID_AFFINE[:3, 3:]).reshape(3, *GRID_SHAPE)


@lru_cache(maxsize=1)
def brain_region() -> np.ndarray:
    """Boolean ellipsoid on the grid roughly covering the brain of an MNI-aligned head."""
    world = _world_grid() - _BRAIN_CENTRE_MM[:, None, None, None]
    return (((world / _BRAIN_AXES_MM[:, None, None, None]) ** 2).sum(0)) <= 1.0


def _rotation(angles_deg) -> np.ndarray:
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rx @ ry @ rz


@lru_cache(maxsize=16)
def _load_scan(path: str) -> tuple[np.ndarray, np.ndarray]:
    image = nib.as_closest_canonical(nib.load(path))
    return np.asarray(image.dataobj, dtype=np.float32), image.affine


def _brain_centre(data: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """World position (mm) of the brain centre of a head scan: below the vertex of the head.

    The head is everything above 6 % of the robust maximum (largest component, holes filled); its top
    slice is the vertex and the centre of its upper 90 mm gives left-right and front-back.
    """
    head = ndi.binary_opening(data > 0.06 * np.percentile(data, 99.5), iterations=2)
    labels, count = ndi.label(head)
    if count > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        head = labels == sizes.argmax()
    head = ndi.binary_fill_holes(head)
    vertex = np.nonzero(head.any(axis=(0, 1)))[0].max()
    upper = head.copy()
    upper[:, :, : max(0, vertex - int(round(90 / abs(affine[2, 2]))))] = False
    cx, cy, _ = ndi.center_of_mass(upper)
    return affine[:3, :3] @ np.array([cx, cy, vertex]) + affine[:3, 3] + _VERTEX_TO_BRAIN_MM


def resample_scan(scan: str | os.PathLike, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A real scan on the template grid: ``(preproc in [0, 1] float32, brain mask uint8)``.

    The brain centre found below the head's vertex goes to the template's brain centre; the mask is
    :func:`brain_region`. ``seed`` > 0 adds a rigid jitter (up to 3 degrees and 3 mm) and a gamma
    curve (0.85 .. 1.15), so that one scan yields several plausible subjects.
    """
    data, affine = _load_scan(str(scan))
    centre = _brain_centre(data, affine)
    rng = np.random.default_rng(seed)
    rotation = _rotation(rng.uniform(-3, 3, 3)) if seed else np.eye(3)
    jitter = rng.uniform(-3, 3, 3) if seed else np.zeros(3)
    # grid voxel -> template world -> scan world (rotated about the brain centre) -> scan voxel
    world = _world_grid().reshape(3, -1) - (_BRAIN_CENTRE_MM + jitter)[:, None]
    inverse = np.linalg.inv(affine)
    scan_vox = inverse[:3, :3] @ (rotation @ world + centre[:, None]) + inverse[:3, 3:]
    volume = ndi.map_coordinates(data, scan_vox, order=1, mode="constant", cval=0.0).reshape(GRID_SHAPE)
    mask = brain_region()
    low, high = np.percentile(volume[mask], [0.5, 99.5])
    scaled = np.clip((volume - low) / (high - low), 0.0, 1.0)
    if seed:
        scaled = scaled ** rng.uniform(0.85, 1.15)
    return scaled.astype(np.float32), mask.astype(np.uint8)


def histogram_match(source: np.ndarray, mask: np.ndarray, reference_values: np.ndarray) -> np.ndarray:
    """Monotone remapping of the brain intensities of ``source`` onto ``reference_values``."""
    out = np.zeros_like(source, dtype=np.float32)
    brain = mask > 0
    values = source[brain]
    ranks = np.argsort(np.argsort(values, kind="stable"), kind="stable")
    reference = np.sort(np.asarray(reference_values, dtype=np.float32))
    out[brain] = reference[(ranks * (reference.size - 1)) // max(values.size - 1, 1)]
    return out


def fake_harmonize(preproc: np.ndarray, mask: np.ndarray, reference_values: np.ndarray,
                   damage: str | None = None) -> np.ndarray:
    """Stand-in for the model (see module docstring); ``damage`` corrupts the anatomy."""
    brain = mask > 0
    out = ndi.gaussian_filter(histogram_match(preproc, mask, reference_values), 0.6)
    if damage == "shift":  # the whole brain 6 mm off: a grid/crop bookkeeping error
        out = ndi.shift(out, (0, 3, 0), order=1)
    elif damage == "blur":  # detail blurred away (FWHM about 12 mm)
        out = ndi.gaussian_filter(out, 2.5)
    elif damage == "erase":  # a 16 mm ball of tissue replaced by its surroundings' mean
        centre = np.array(ndi.center_of_mass(brain)).astype(int) + [10, 8, 6]
        ball = np.linalg.norm(np.indices(out.shape) - centre[:, None, None, None], axis=0) < 8
        out[ball] = 0.05
    elif damage is not None:
        raise ValueError(f"unknown damage {damage!r}; use one of {DAMAGES}")
    return np.where(brain, np.clip(out, 0.0, 1.0), 0.0).astype(np.float32)


def _save_nifti(path: Path, data: np.ndarray) -> None:
    image = nib.Nifti1Image(data, GRID_AFFINE)
    image.header.set_xyzt_units("mm")
    with atomic_path(path) as tmp:
        nib.save(image, tmp)


def write_image(output_dir: str | os.PathLike, spec: ImageSpec, *, preproc: np.ndarray, mask: np.ndarray,
                harmonized: np.ndarray | None, target_site: str,
                target_hist: tuple[np.ndarray, np.ndarray], model: Mapping | None = None) -> dict[str, Path]:
    """Write the contract files of one image (NIfTIs + sidecars); returns ``{desc: path}``."""
    output_dir = Path(output_dir)
    paths = {}
    raw = derivative_path({"subject": spec.subject, "session": spec.session, "run": spec.run,
                           "suffix": "T1w", "extension": ".nii.gz"})
    for desc, suffix, data in (("preproc", "T1w", preproc), ("brain", "mask", mask),
                               ("harmonized", "T1w", harmonized)):
        if data is None:
            continue
        entities = dict(spec.entities, desc=desc, suffix=suffix)
        path = derivative_path(dict(entities, extension=".nii.gz"), output_dir)
        _save_nifti(path, data)
        paths[desc] = path
        sidecar = {"Sources": [f"bids:raw:{raw.as_posix()}"]}
        if desc == "preproc":
            sidecar["SkullStripped"] = False
        elif desc == "brain":
            sidecar["Type"] = "Brain"
        else:
            sidecar["Sources"].append(f"bids::{paths['preproc'].relative_to(output_dir).as_posix()}")
            sidecar["SkullStripped"] = True
            sidecar["HCLD"] = _provenance(spec, target_site, model)
            sidecar["QC"] = metrics.image_qc(preproc, harmonized, mask, *target_hist)
        atomic_write_json(path.with_name(path.name.replace(".nii.gz", ".json")), sidecar)
    return paths


def _provenance(spec: ImageSpec, target_site: str, model: Mapping | None) -> dict:
    import platform

    from .. import __version__

    model = dict(model or {})
    rng = np.random.default_rng(spec.seed + 1000)
    return {
        "ModelName": model.get("name", "synthetic-fixture"),
        "ModelSHA256": model.get("sha256", "0" * 64),
        "ModelPath": model.get("path", "n/a (synthetic fixture, no model)"),
        "SourceSite": spec.site,
        "SiteSource": "participants.tsv",
        "TargetSite": target_site,
        "SourceIsTarget": spec.site == target_site,
        "DemoModel": False,
        "ReferenceImage": None,
        "StylePrototype": f"site:{target_site}",
        "DDIMInversionSteps": 30,
        "DDIMSamplingSteps": 10,
        "RandomSeed": 0,
        "Device": "cpu",
        "IntensityScaling": {"method": "percentile", "low_percentile": 0.5, "high_percentile": 99.5,
                             "low": 0.0, "high": 1.0},
        "Versions": {"hcld-bids": __version__, "python": platform.python_version()},
        "WallTimeSeconds": {"preprocessing": round(float(rng.uniform(40, 80)), 1),
                            "harmonization": round(float(rng.uniform(15, 30)), 1)},
        **spec.extra,
    }


def write_participants_tsv(bids_dir: str | os.PathLike, rows: Mapping[str, Mapping[str, object]]) -> Path:
    """A minimal BIDS_DIR with ``participants.tsv`` (``participant_id`` + the given columns)."""
    bids_dir = Path(bids_dir)
    bids_dir.mkdir(parents=True, exist_ok=True)
    columns = sorted({key for row in rows.values() for key in row})
    lines = ["\t".join(["participant_id", *columns])]
    for label, row in rows.items():
        lines.append("\t".join([f"sub-{label}", *(str(row.get(c, "n/a")) for c in columns)]))
    (bids_dir / "participants.tsv").write_text("\n".join(lines) + "\n")
    (bids_dir / "dataset_description.json").write_text(
        json.dumps({"Name": "synthetic", "BIDSVersion": "1.10.0", "DatasetType": "raw"}) + "\n")
    return bids_dir


def build_output_dir(output_dir: str | os.PathLike, specs: list[ImageSpec], target_site: str,
                     bids_dir: str | os.PathLike | None = None) -> Path:
    """Write all images of ``specs`` into ``output_dir`` harmonized toward ``target_site``.

    The target style (histogram and reference intensities) comes from the undamaged images of the
    target site, as a model bundle's site histogram would.
    """
    from ..bids.derivatives import init_derivatives_dataset

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    init_derivatives_dataset(output_dir, bids_dir or output_dir.parent / "bids")
    prepared = [(spec, *resample_scan(spec.scan, spec.seed)) for spec in specs]
    target = [(p, m) for spec, p, m in prepared if spec.site == target_site]
    if not target:
        raise ValueError(f"no image of the target site {target_site!r}")
    target_hist = metrics.site_histogram((p for p, _ in target), (m for _, m in target))
    reference_values = np.concatenate([p[m > 0] for p, m in target])
    for spec, preproc, mask in prepared:
        harmonized = fake_harmonize(preproc, mask, reference_values, spec.damage) if spec.harmonized else None
        write_image(output_dir, spec, preproc=preproc, mask=mask, harmonized=harmonized,
                    target_site=target_site, target_hist=target_hist)
    return output_dir
