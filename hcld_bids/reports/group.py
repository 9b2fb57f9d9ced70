"""Group level: ``OUTPUT_DIR/group_T1w.tsv`` (+ ``.json``) and ``OUTPUT_DIR/group_report.html``.

Reads only what the participant level wrote in OUTPUT_DIR (and ``participants.tsv`` of BIDS_DIR for
age). The table has one row per template-space T1w: site, target, distances of the brain-intensity
histogram to the target style before and after, structure preservation, mask agreement, run times and
flags; half-finished images (no harmonized output, missing partner files, unreadable sidecar) get a
row with their problem as a flag and no numbers.

The report compares the sites before and after harmonization:

- at the top: the images that failed QC, a banner when the demo model made them, and a verdict
  (:func:`group_verdict`): did the sites come together without the images losing their anatomy?
- mean brain-intensity histograms per site, with the target style;
- site-by-site Wasserstein-1 distances of those histograms, and beside them whether each image kept its
  own anatomy (:func:`anatomy_identification`): smaller distances mean nothing if every image became the
  same brain;
- accuracy of a cross-validated site classifier (logistic regression, stratified k-fold) on two
  feature sets — the 64-bin histogram and the brain at 4 mm (block means) — next to chance, the rate
  of the most frequent site: harmonization should bring it down toward chance. Both sets are
  standardized with the spread of the images before harmonization, so the residual differences after
  it count in those units (histograms calibrated onto one target differ by rounding only);
- a 2D PCA embedding of the 4 mm features coloured by site, one PCA fitted on before and after
  together so both panels share axes;
- with ages in participants.tsv: cross-validated ridge regression of age on the 4 mm features, and
  the agreement of the per-block age correlations before and after (the age signal must survive);
- a mosaic of a few images per site and a table of flagged and outlying images.

Each image's three files are read once, in ``n_jobs`` processes (:mod:`.features`).
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
import multiprocessing
import os
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import __version__
from ..bids.atomic import atomic_write_json, atomic_write_text
from ..errors import NoDataError
from . import features, figures, metrics
from .outputs import ImageRecord, find_images, find_strays

LOGGER = logging.getLogger("hcld_bids.reports")
GROUP_TSV = "group_T1w.tsv"
GROUP_JSON = "group_T1w.json"
GROUP_HTML = "group_report.html"
#: Images shown per site in the mosaic.
MOSAIC_PER_SITE = 4
#: Rows of the outlier table that get a thumbnail.
MAX_THUMBNAILS = 40
#: Robust z-score of the distance to the target above which an image is an ``outlier``, and the least
#: distance that counts (so that a group of near-identical images does not flag tiny differences).
OUTLIER_Z = 3.5
OUTLIER_MIN_DISTANCE = 0.02
FLAG_OUTLIER = "outlier"
#: Group-level flag of an image whose harmonized version is more like another participant's input.
FLAG_NOT_OWN = "not-own-anatomy"
#: The group keeps its anatomy when at least this share of harmonized images is most like its own input...
IDENTIFICATION_MIN = 0.9
#: ... and at most this share carries a structure flag of the anatomy guard.
STRUCTURE_FLAGGED_MAX = 0.1
#: The sites came together when the mean distance between them fell by at least this fraction.
DISTANCE_DROP_MIN = 0.2
#: Columns of the image features compared for identification (a seeded subset when there are more).
IDENTIFICATION_FEATURES = 2048
#: Least number of images with a known age for the age analysis.
MIN_AGE_IMAGES = 8

COLUMNS = {
    "participant_id": "Participant label (sub-<label>).",
    "session_id": "Session label (ses-<label>) or n/a.",
    "image": "Harmonized image (or, when it is missing, the preprocessed one), relative to OUTPUT_DIR.",
    "qc": "fail: the image has a QC flag (see flags; do not use it without looking at its report); pass: no flag; "
          "incomplete: files are missing.",
    "site": "Site of the input image (HCLD.SourceSite of the sidecar).",
    "target": "Target style: the target site, or reference:<image> for --reference-image.",
    "at_target_site": "yes: the image was already at the target site and was harmonized anyway (one processing for "
                      "all images); mean_abs_change says how much that changed it.",
    "model": "Name of the model bundle that harmonized the image.",
    "wasserstein_before": "Wasserstein-1 distance between the brain-intensity histograms of the input and of the "
                          "target style, in units of the [0, 1] intensity range.",
    "wasserstein_after": "The same distance for the harmonized image.",
    "structure_preservation": "Agreement of the edge directions of input and harmonized image inside the brain "
                              f"(1: same anatomy); flagged below {metrics.STRUCTURE_THRESHOLD}.",
    "mask_dice": "Dice overlap of the brain mask and the brain found in the harmonized image; flagged below "
                 f"{metrics.MASK_DICE_THRESHOLD}.",
    "mean_abs_change": "Mean absolute difference of harmonized and input image inside the brain, in units of the "
                       "[0, 1] intensity range.",
    "own_anatomy": "yes: of all inputs of the group, the harmonized image is most like its own (rank correlation of "
                   "its 4 mm brain blocks); no: it is more like another participant's input (it lost its anatomy); "
                   "n/a: not computed.",
    "runtime_preprocessing_s": "Wall time of preprocessing in seconds, the sum of its steps' own times (sidecar "
                               "HCLD.WallTimeSeconds; a step reused from the work directory counts its first run).",
    "runtime_harmonization_s": "Wall time of harmonization in seconds.",
    "runtime_total_s": "Preprocessing plus harmonization wall time in seconds (those known).",
    "flags": "QC flags separated by ';' (n/a: none): " + ", ".join(
        [*metrics.QC_FLAGS, FLAG_OUTLIER, FLAG_NOT_OWN, "missing-harmonized", "missing-preproc", "missing-mask",
         "missing-sidecar", "missing-qc", "unreadable"]) + ".",
}


def _label_of(record: ImageRecord, key: str, prefix: str) -> str:
    value = record.entities.get(key)
    return f"{prefix}-{value}" if value is not None else "n/a"


def _target_of(hcld: dict) -> str:
    if hcld.get("TargetSite"):
        return str(hcld["TargetSite"])
    if hcld.get("ReferenceImage"):
        return f"reference:{hcld['ReferenceImage']}"
    return str(hcld.get("StylePrototype") or "n/a")


def _finite(value) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return math.nan
    return value if math.isfinite(value) else math.nan


def _row(output_dir: Path, record: ImageRecord) -> dict:
    hcld = record.hcld
    qc = record.qc or {}
    walltime = hcld.get("WallTimeSeconds") or {}
    # encode/inversion/sampling/decode are parts of "harmonization"; the total is preprocessing + harmonization
    known = [_finite(walltime.get(k)) for k in ("preprocessing", "harmonization") if walltime.get(k) is not None]
    known = [v for v in known if math.isfinite(v)]
    return {
        "participant_id": f"sub-{record.subject}",
        "session_id": _label_of(record, "session", "ses"),
        "image": record.relative(output_dir),
        "qc": "n/a",  # set once every flag is known (_qc_status)
        "site": str(hcld.get("SourceSite") or "n/a"),
        "target": _target_of(hcld) if hcld else "n/a",
        "at_target_site": ("yes" if record.at_target else "no") if hcld else "n/a",
        "model": str(hcld.get("ModelName") or "n/a"),
        "wasserstein_before": _finite(qc.get("WassersteinInputToTarget")),
        "wasserstein_after": _finite(qc.get("WassersteinOutputToTarget")),
        "structure_preservation": _finite(qc.get("StructurePreservation")),
        "mask_dice": _finite(qc.get("MaskDice")),
        "mean_abs_change": _finite(qc.get("MeanAbsoluteChange")),
        "own_anatomy": "n/a",
        "runtime_preprocessing_s": _finite(walltime.get("preprocessing")),
        "runtime_harmonization_s": _finite(walltime.get("harmonization")),
        "runtime_total_s": float(sum(known)) if known else math.nan,
        "flags": list(qc.get("Flags") or []) + list(record.problems),
    }


def _read_all(tasks: list[features.ImageTask], n_jobs: int) -> list[dict]:
    if n_jobs <= 1 or len(tasks) < 4:
        return [features.read_image(task) for task in tasks]
    # spawn: workers import only the light features module, and no forked copy of a threaded parent
    context = multiprocessing.get_context("spawn")
    chunk = max(1, min(16, len(tasks) // (4 * n_jobs)))
    with ProcessPoolExecutor(max_workers=n_jobs, mp_context=context) as pool:
        return list(pool.map(features.read_image, tasks, chunksize=chunk))


def _fill_columns(matrix: np.ndarray, keep_fraction: float = 0.9) -> np.ndarray:
    """Keep the columns finite in at least ``keep_fraction`` of the rows; fill the rest by column means."""
    finite = np.isfinite(matrix)
    keep = finite.mean(axis=0) >= keep_fraction
    matrix = matrix[:, keep]
    if matrix.size == 0:
        return matrix
    means = np.nanmean(np.where(np.isfinite(matrix), matrix, np.nan), axis=0)
    return np.where(np.isfinite(matrix), matrix, means[None, :]).astype(np.float64)


def _pca(components: int, n_samples: int):
    """PCA with the solver that is fast for the size: exact SVD for small groups, randomized for large."""
    from sklearn.decomposition import PCA

    return PCA(n_components=components, svd_solver="full" if n_samples <= 300 else "randomized", random_state=0)


def site_classifier(X: np.ndarray, sites: list[str], seed: int = 0, scale=None) -> dict | None:
    """Cross-validated accuracy of logistic regression predicting the site; None if not computable.

    Stratified k-fold with k = min(5, size of the smallest site); standardization and PCA (at most 20
    components) are fitted inside each fold. ``scale``: a fixed ``(mean, sd)`` to standardize with instead
    (:func:`.metrics.feature_scale` of the images before harmonization). ``chance``: the share of the most
    frequent site.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    counts = Counter(sites)
    if len(counts) < 2 or min(counts.values()) < 2 or X.shape[1] == 0:
        return None
    folds = min(5, min(counts.values()))
    n_train = len(sites) - len(sites) // folds
    components = max(1, min(20, n_train - 1, X.shape[1]))
    steps = [_pca(components, len(sites)), LogisticRegression(max_iter=2000)]
    if scale is None:
        steps.insert(0, StandardScaler())
    else:
        X = (np.asarray(X, dtype=np.float64) - scale[0]) / scale[1]
    model = make_pipeline(*steps)
    scores = cross_val_score(model, X, np.asarray(sites), cv=StratifiedKFold(folds, shuffle=True, random_state=seed))
    return {"mean": float(scores.mean()), "sd": float(scores.std()), "folds": folds,
            "chance": max(counts.values()) / len(sites)}


def embedding_2d(before: np.ndarray, after: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """PCA to 2D fitted on before and after together (shared axes); returns both and explained ratios."""
    from sklearn.preprocessing import StandardScaler

    joint = np.vstack([before, after])
    scaler = StandardScaler().fit(joint)
    pca = _pca(2, len(joint)).fit(scaler.transform(joint))
    return (pca.transform(scaler.transform(before)), pca.transform(scaler.transform(after)),
            [float(v) for v in pca.explained_variance_ratio_])


def age_association(X_before: np.ndarray, X_after: np.ndarray, age: np.ndarray) -> dict:
    """Cross-validated age prediction (ridge on PCA of the features) before and after, and agreement
    (Pearson r) of the per-feature age correlations before and after."""
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import KFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folds = min(5, len(age))
    components = max(1, min(20, len(age) - len(age) // folds - 1, X_before.shape[1]))
    result = {}
    for name, X in (("before", X_before), ("after", X_after)):
        model = make_pipeline(StandardScaler(), _pca(components, len(age)), RidgeCV(alphas=np.logspace(-2, 4, 13)))
        predicted = cross_val_predict(model, X, age, cv=KFold(folds, shuffle=True, random_state=0))
        r = float(np.corrcoef(predicted, age)[0, 1]) if np.std(predicted) > 0 else math.nan
        result[name] = {"predicted": predicted, "r": r, "mae": float(np.mean(np.abs(predicted - age)))}

    def correlations(X):
        Xc = X - X.mean(axis=0)
        ac = age - age.mean()
        with np.errstate(invalid="ignore", divide="ignore"):
            return (Xc * ac[:, None]).sum(0) / np.sqrt((Xc**2).sum(0) * (ac**2).sum())

    cb, ca = correlations(X_before), correlations(X_after)
    both = np.isfinite(cb) & np.isfinite(ca)
    result["map_agreement"] = float(np.corrcoef(cb[both], ca[both])[0, 1]) if both.sum() > 2 else math.nan
    result["n"] = int(len(age))
    return result


def read_ages(bids_dir: str | os.PathLike | None) -> dict[str, float]:
    """participant_id -> age from BIDS_DIR/participants.tsv (column ``age``, any case); {} if none."""
    if bids_dir is None:
        return {}
    path = Path(bids_dir) / "participants.tsv"
    if not path.is_file():
        return {}
    import pandas as pd

    try:
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except (OSError, ValueError) as error:
        LOGGER.warning("cannot read %s (%s); no age analysis", path, error)
        return {}
    column = next((c for c in table.columns if c.lower() == "age"), None)
    if column is None or "participant_id" not in table.columns:
        return {}
    ages = pd.to_numeric(table[column], errors="coerce")
    ids = table["participant_id"].map(lambda p: p if p.startswith("sub-") else f"sub-{p}")
    return {pid: float(a) for pid, a in zip(ids, ages) if math.isfinite(a)}


def _write_table(output_dir: Path, rows: list[dict]) -> Path:
    def cell(value) -> str:
        if isinstance(value, list):
            return ";".join(value) if value else "n/a"
        if isinstance(value, float):
            return "n/a" if not math.isfinite(value) else f"{value:.6g}"
        return str(value)

    lines = ["\t".join(COLUMNS)] + ["\t".join(cell(row[c]) for c in COLUMNS) for row in rows]
    atomic_write_json(output_dir / GROUP_JSON, {c: {"Description": d} for c, d in COLUMNS.items()})
    return atomic_write_text(output_dir / GROUP_TSV, "\n".join(lines) + "\n")


def _mean_histograms(rows, key: str, group_key: str) -> dict[str, np.ndarray]:
    groups: dict[str, list] = {}
    for row in rows:
        if row.get(key) is not None:
            groups.setdefault(row[group_key], []).append(np.asarray(row[key], float))
    return {name: np.mean(values, axis=0) for name, values in sorted(groups.items())}


@dataclass
class GroupResult:
    """What :func:`write_group` wrote and what the level's summary says: ``summary`` (counts, sites, targets,
    models), ``flagged`` (rows with a QC flag or a problem), ``incomplete`` (image paths)."""

    tsv: Path
    html: Path
    summary: dict
    flagged: list
    incomplete: list


def run_group(output_dir: str | os.PathLike, bids_dir: str | os.PathLike | None = None, *,
              n_jobs: int = 1) -> tuple[Path, Path]:
    """Write the group table and report from OUTPUT_DIR; returns ``(tsv_path, html_path)`` (see
    :func:`write_group`)."""
    result = write_group(output_dir, bids_dir, n_jobs=n_jobs)
    return result.tsv, result.html


def write_group(output_dir: str | os.PathLike, bids_dir: str | os.PathLike | None = None, *,
                n_jobs: int = 1) -> GroupResult:
    """Write the group table and report from OUTPUT_DIR; return what was written and its summary.

    Raises :class:`hcld_bids.errors.NoDataError` when OUTPUT_DIR holds no complete harmonized image.
    """
    output_dir = Path(output_dir)
    clock = time.perf_counter()
    records = find_images(output_dir) if output_dir.is_dir() else []
    complete = [r for r in records if r.complete]
    if not complete:
        raise NoDataError(
            f"{output_dir} holds no harmonized images (*_desc-harmonized_T1w.nii.gz with their preprocessed image "
            "and brain mask); run the participant level into this output directory first"
        )
    strays = [p.relative_to(output_dir).as_posix() for p in find_strays(output_dir)]
    for stray in strays:
        LOGGER.warning("%s: leftover of an interrupted write, ignored", stray)
    rows = [_row(output_dir, record) for record in records]
    by_record = {id(r): i for i, r in enumerate(records)}

    # which images need a slice (mosaic, thumbnails) is known from the sidecars, before reading images
    per_site: Counter = Counter()
    want_slice = set()
    for record in complete:
        row = rows[by_record[id(record)]]
        if per_site[row["site"]] < MOSAIC_PER_SITE:
            per_site[row["site"]] += 1
            want_slice.add(id(record))
        if row["flags"] and len(want_slice) < 10 * MOSAIC_PER_SITE + MAX_THUMBNAILS:
            want_slice.add(id(record))
    import nibabel as nib

    first_mask = nib.load(complete[0].mask)
    block_index = features.brain_blocks(np.asarray(first_mask.dataobj), first_mask.header.get_zooms())
    tasks = [features.ImageTask(index=by_record[id(r)], preproc=str(r.preproc), mask=str(r.mask),
                                harmonized=str(r.harmonized), block_index=block_index,
                                want_slice=id(r) in want_slice, want_qc=r.qc is None) for r in complete]
    LOGGER.info("group: %d images found in %.1f s", len(records), time.perf_counter() - clock)
    clock = time.perf_counter()
    results = _read_all(tasks, n_jobs)
    LOGGER.info("group: %d images read with %d process(es) in %.1f s", len(tasks), n_jobs, time.perf_counter() - clock)

    slices, feats = {}, {}
    for result in results:
        row = rows[result["index"]]
        if result.get("error"):
            row["flags"].append("unreadable")
            LOGGER.warning("%s: %s", row["image"], result["error"])
            continue
        if result["qc"] is not None:
            row.update(structure_preservation=_finite(result["qc"]["StructurePreservation"]),
                       mask_dice=_finite(result["qc"]["MaskDice"]))
            row["flags"] = sorted(set(row["flags"]) | set(result["qc"]["Flags"]))
            row["_qc"] = result["qc"]
        feats[result["index"]] = (result["before"], result["after"])
        if result["slice"] is not None:
            slices[result["index"]] = result["slice"]

    # outliers: distance to the target far above that of the other images of the same target
    for target in sorted({row["target"] for row in rows}):
        members = [i for i, row in enumerate(rows) if row["target"] == target]
        z = metrics.robust_z([rows[i]["wasserstein_after"] for i in members])
        for i, score in zip(members, z):
            if np.isfinite(score) and score > OUTLIER_Z and rows[i]["wasserstein_after"] > OUTLIER_MIN_DISTANCE:
                rows[i]["flags"].append(FLAG_OUTLIER)

    from threadpoolctl import threadpool_limits

    # one BLAS thread: the matrices are small and wide, and OpenBLAS threads that wait on each other
    # made PCA ten times slower on a busy 2-core machine than one thread
    clock = time.perf_counter()
    ages = read_ages(bids_dir)
    with threadpool_limits(limits=1, user_api="blas"):
        analysis = _analyses(records, rows, feats, ages)
    LOGGER.info("group: analyses in %.1f s", time.perf_counter() - clock)
    for row, record in zip(rows, records):
        row["qc"] = _qc_status(row, record)
    tsv = _write_table(output_dir, rows)
    html, summary, flagged = _write_report(output_dir, records, rows, slices, strays, analysis, bids_dir)
    incomplete = [row["image"] for row, record in zip(rows, records) if not record.complete]
    return GroupResult(tsv=tsv, html=html, summary=summary, flagged=flagged, incomplete=incomplete)


def _at_target_summary(rows: list[dict]) -> dict:
    """How much harmonization changed the images already at the target site, beside the others."""
    at = [row["mean_abs_change"] for row in rows if row["at_target_site"] == "yes" and math.isfinite(
        row["mean_abs_change"])]
    others = [row["mean_abs_change"] for row in rows if row["at_target_site"] == "no" and math.isfinite(
        row["mean_abs_change"])]
    return {"n": sum(1 for row in rows if row["at_target_site"] == "yes"),
            "change": float(np.median(at)) if at else math.nan,
            "others_change": float(np.median(others)) if others else math.nan}


def _qc_status(row: dict, record: ImageRecord) -> str:
    """``incomplete`` (files missing), ``fail`` (any QC flag) or ``pass``."""
    if not record.complete or any(f.startswith("missing") or f == "unreadable" for f in row["flags"]):
        return "incomplete"
    return "fail" if row["flags"] else "pass"


def anatomy_identification(before: np.ndarray, after: np.ndarray, participants: list[str],
                           max_features: int = IDENTIFICATION_FEATURES) -> dict | None:
    """Is each harmonized image still its own person? For every harmonized image, the rank correlation of its
    brain features (4 mm blocks) with every input image of the group; it keeps its own anatomy when the most
    similar input is its own (or another image of the same participant).

    A harmonization that turns every image into the same brain, or into the target's anatomy, fails this
    even when its intensity histograms match the target perfectly; an honest one, which only changes
    intensities monotonically, passes it. Returns ``{"own": [bool], "rank": [int], "rate", "chance", "n"}``
    (``rank`` 1: its own input is the most similar), or None with fewer than 3 images.
    """
    from scipy.stats import rankdata

    n = len(participants)
    if n < 3 or before.shape != after.shape or before.shape[1] < 2:
        return None
    columns = np.arange(before.shape[1])
    if columns.size > max_features:
        columns = np.sort(np.random.default_rng(0).choice(columns, max_features, replace=False))

    def standardized_ranks(matrix):
        ranks = rankdata(matrix[:, columns], axis=1)
        ranks -= ranks.mean(axis=1, keepdims=True)
        norms = np.linalg.norm(ranks, axis=1, keepdims=True)
        return np.divide(ranks, norms, out=np.zeros_like(ranks), where=norms > 0)

    similarity = standardized_ranks(after) @ standardized_ranks(before).T  # [harmonized i, input j]
    people = np.asarray(participants)
    own, rank = [], []
    for i in range(n):
        same = people == people[i]
        best_own = similarity[i, same].max()
        rank.append(int(1 + (similarity[i, ~same] > best_own).sum()))
        own.append(rank[-1] == 1)
    distinct = len(set(participants))
    return {"own": own, "rank": rank, "rate": float(np.mean(own)), "chance": 1.0 / distinct, "n": n}


def group_verdict(w_before: np.ndarray, w_after: np.ndarray, identification: dict | None,
                  structure_flagged: int, n_images: int) -> dict:
    """Did harmonization bring the sites together without changing anatomy?

    Sites together: the mean site-to-site distance fell by at least :data:`DISTANCE_DROP_MIN` of its value.
    Anatomy kept: at least :data:`IDENTIFICATION_MIN` of the harmonized images are most like their own input
    (:func:`anatomy_identification`) and at most :data:`STRUCTURE_FLAGGED_MAX` carry a structure flag.
    Returns ``{"ok", "closer", "anatomy", "text", ...}``; ``ok`` is None when it cannot be told.
    """
    off = ~np.eye(len(w_before), dtype=bool) if len(w_before) else np.zeros((0, 0), bool)
    before = float(np.nanmean(w_before[off])) if off.any() else math.nan
    after = float(np.nanmean(w_after[off])) if off.any() else math.nan
    closer = (after <= (1 - DISTANCE_DROP_MIN) * before) if math.isfinite(before) and math.isfinite(after) else None
    flagged_share = structure_flagged / n_images if n_images else math.nan
    rate = identification["rate"] if identification else None
    anatomy = None
    if rate is not None:
        anatomy = rate >= IDENTIFICATION_MIN and flagged_share <= STRUCTURE_FLAGGED_MAX
    elif n_images:
        anatomy = flagged_share <= STRUCTURE_FLAGGED_MAX
    kept = (f"{rate:.0%} of the harmonized images are most like their own input (chance "
            f"{identification['chance']:.0%})" if rate is not None else "own-anatomy check needs 3 images")
    flags = f"{structure_flagged} of {n_images} carry a structure flag"
    moved = (f"mean distance between sites {100 * before:.1f} -> {100 * after:.1f} (% of the intensity range)"
             if closer is not None else "a single site: no distance between sites")
    if closer is None or anatomy is None:
        text = f"cannot tell: {moved}; {kept}; {flags}"
        ok = None
    elif closer and anatomy:
        text = f"the sites came together without changing anatomy: {moved}; {kept}; {flags}"
        ok = True
    elif closer and rate is not None and rate < IDENTIFICATION_MIN:
        text = (f"NOT a success: the sites came closer, but only {kept}: the images lost their anatomy, and the "
                f"smaller distances come from that, not from harmonization ({moved}; {flags})")
        ok = False
    elif closer:
        text = (f"NOT a success yet: the sites came closer ({moved}), but {flags} (anatomy changed); look at those "
                f"images before using the group ({kept})")
        ok = False
    elif anatomy:
        text = f"anatomy kept, but the sites did not come together: {moved}; {kept}; {flags}"
        ok = False
    else:
        text = f"NOT a success: the sites did not come together and the anatomy was not kept: {moved}; {kept}; {flags}"
        ok = False
    return {"ok": ok, "closer": closer, "anatomy": anatomy, "text": text, "distance_before": before,
            "distance_after": after, "identification": rate, "structure_flagged": structure_flagged}


def _analyses(records, rows, feats, ages) -> dict:
    """Everything the report plots, from the rows with features and a known site."""
    usable = [i for i in sorted(feats) if rows[i]["site"] != "n/a"]
    sites = [rows[i]["site"] for i in usable]
    site_names = sorted(set(sites))
    out = {"n_usable": len(usable), "sites": site_names, "colors": figures.site_colors(site_names)}
    qcs = []
    for i in usable:
        qc = records[i].qc or rows[i].get("_qc") or {}
        qcs.append({"site": rows[i]["site"], "target": rows[i]["target"], "edges": qc.get("HistogramBins"),
                    "input": qc.get("InputHistogram"), "output": qc.get("OutputHistogram"),
                    "target_hist": qc.get("TargetHistogram")})
    edges = next((q["edges"] for q in qcs if q["edges"]), metrics.histogram_edges().tolist())
    out["edges"] = edges
    out["hist_before"] = _mean_histograms(qcs, "input", "site")
    out["hist_after"] = _mean_histograms(qcs, "output", "site")
    out["hist_target"] = _mean_histograms(qcs, "target_hist", "target")
    n = len(site_names)
    out["w_before"], out["w_after"] = np.zeros((n, n)), np.zeros((n, n))
    for a in range(n):
        for b in range(n):
            for key, matrix in (("hist_before", out["w_before"]), ("hist_after", out["w_after"])):
                matrix[a, b] = metrics.wasserstein_1d(out[key][site_names[a]], out[key][site_names[b]], edges)
    out["identification"] = None
    out["verdict"] = None
    if not usable:
        return out
    X_before = _fill_columns(np.vstack([feats[i][0] for i in usable]))
    X_after = _fill_columns(np.vstack([feats[i][1] for i in usable]))
    identification = anatomy_identification(X_before, X_after, [rows[i]["participant_id"] for i in usable])
    out["identification"] = identification
    if identification is not None:
        for k, i in enumerate(usable):
            rows[i]["own_anatomy"] = "yes" if identification["own"][k] else "no"
            if not identification["own"][k]:
                rows[i]["flags"].append(FLAG_NOT_OWN)
    H_before = np.vstack([q["input"] for q in qcs]) if all(q["input"] for q in qcs) else None
    H_after = np.vstack([q["output"] for q in qcs]) if all(q["output"] for q in qcs) else None
    classifier = []
    for name, before, after in (("intensity histogram", H_before, H_after), ("brain at 4 mm", X_before, X_after)):
        if before is None or after is None:
            continue
        # both on before's spread: what remains after counts in units of the unharmonized differences
        scale = metrics.feature_scale(before)
        b, a = site_classifier(before, sites, scale=scale), site_classifier(after, sites, scale=scale)
        if b and a:
            classifier.append({"features": name, "before": b["mean"], "after": a["mean"], "before_sd": b["sd"],
                               "after_sd": a["sd"], "chance": b["chance"], "folds": b["folds"]})
    out["classifier"] = classifier
    if len(usable) >= 3 and X_before.shape[1] >= 2 and X_before.shape == X_after.shape:
        out["embedding"] = embedding_2d(X_before, X_after)
        out["embedding_sites"] = sites
    with_age = [k for k, i in enumerate(usable) if rows[i]["participant_id"] in ages]
    out["age_available"] = bool(ages)
    if len(with_age) >= MIN_AGE_IMAGES and X_before.shape == X_after.shape:
        age = np.array([ages[rows[usable[k]]["participant_id"]] for k in with_age])
        if np.std(age) > 0:
            out["age"] = age_association(X_before[with_age], X_after[with_age], age)
            out["age"]["age"] = age
            out["age"]["sites"] = [sites[k] for k in with_age]
    structure = {metrics.FLAG_STRUCTURE, metrics.FLAG_STRUCTURE_LOCAL, metrics.FLAG_EMPTY}
    flagged = sum(1 for i in usable if structure & set(rows[i]["flags"]))
    out["verdict"] = group_verdict(out["w_before"], out["w_after"], out["identification"], flagged, len(usable))
    return out


def _write_report(output_dir, records, rows, slices, strays, analysis, bids_dir):
    from .participant import FLAG_TEXT, template_environment

    clock = time.perf_counter()
    colors = analysis["colors"]
    figs = {}
    if analysis["hist_before"]:
        figs["histograms"] = figures.data_uri(figures.site_histograms(
            analysis["edges"], analysis["hist_before"], analysis["hist_after"], analysis["hist_target"], colors), "svg")
    if len(analysis["sites"]) >= 2:
        figs["distances"] = figures.data_uri(figures.distance_matrices(
            analysis["sites"], analysis["w_before"], analysis["w_after"]), "svg")
    if analysis.get("classifier"):
        figs["classifier"] = figures.data_uri(figures.classifier_bars(analysis["classifier"]), "svg")
    if "embedding" in analysis:
        before, after, explained = analysis["embedding"]
        figs["embedding"] = figures.data_uri(
            figures.embedding(before, after, analysis["embedding_sites"], colors, explained),
            "svg" if len(before) <= 300 else "png")
    if "age" in analysis:
        age = analysis["age"]
        figs["age"] = figures.data_uri(figures.age_scatter(
            age["age"], age["before"]["predicted"], age["after"]["predicted"], age["before"], age["after"],
            age["sites"], colors), "svg" if len(age["age"]) <= 300 else "png")
    mosaic_rows = {}
    for i, row in enumerate(rows):
        if i in slices and row["site"] != "n/a":
            pairs = mosaic_rows.setdefault(row["site"], [])
            if len(pairs) < MOSAIC_PER_SITE:
                pairs.append(slices[i])
    if mosaic_rows:
        figs["mosaic"] = figures.data_uri(figures.site_mosaic(dict(sorted(mosaic_rows.items()))))

    flagged = []
    for i, row in enumerate(rows):
        if not row["flags"]:
            continue
        report = output_dir / f"{row['participant_id']}.html"
        thumb = None
        if i in slices and len([f for f in flagged if f["thumb"]]) < MAX_THUMBNAILS:
            thumb = figures.data_uri(figures.thumbnail(*slices[i]))
        flagged.append({**row, "report": report.name if report.is_file() else None, "thumb": thumb})

    counts = Counter(rows[i]["site"] for i, record in enumerate(records) if record.complete)
    summary = {
        "images": sum(1 for r in records if r.complete),
        "incomplete": sum(1 for r in records if not r.complete),
        "participants": len({row["participant_id"] for row in rows}),
        "sites": dict(sorted(counts.items())),
        "targets": dict(sorted(Counter(row["target"] for row in rows if row["target"] != "n/a").items())),
        "models": sorted({row["model"] for row in rows if row["model"] != "n/a"}),
        "flagged": len(flagged),
        "qc_failed": [{**row, "report": f"{row['participant_id']}.html" if (
            output_dir / f"{row['participant_id']}.html").is_file() else None} for row in rows if row["qc"] == "fail"],
        "demo": any(record.demo for record in records),
        "verdict": analysis.get("verdict"),
        "identification": analysis.get("identification"),
        "at_target": _at_target_summary(rows),
    }
    anatomy_rows = [row for row in rows if row["own_anatomy"] != "n/a"]
    html = template_environment().get_template("group.html.j2").render(
        anatomy_rows=anatomy_rows, verdict_thresholds={
            "identification": IDENTIFICATION_MIN, "structure_flagged": STRUCTURE_FLAGGED_MAX,
            "distance_drop": DISTANCE_DROP_MIN},
        version=__version__, generated=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        summary=summary, figs=figs, analysis=analysis, flagged=flagged, strays=strays, flag_text=FLAG_TEXT,
        thresholds={"structure": metrics.STRUCTURE_THRESHOLD, "local": metrics.LOCAL_STRUCTURE_THRESHOLD,
                    "dice": metrics.MASK_DICE_THRESHOLD, "outlier_z": OUTLIER_Z},
        bids_dir=str(bids_dir) if bids_dir else None, min_age=MIN_AGE_IMAGES,
        tsv=GROUP_TSV, citation=(output_dir / "logs" / "CITATION.html").is_file(),
    )
    LOGGER.info("group: figures and page in %.1f s", time.perf_counter() - clock)
    return atomic_write_text(output_dir / GROUP_HTML, html), summary, flagged


__all__ = ["run_group", "write_group", "GroupResult", "GROUP_TSV", "GROUP_HTML", "COLUMNS"]
