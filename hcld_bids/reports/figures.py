"""Figures of the participant and group reports (matplotlib, Agg, no pyplot state).

Every function returns a :class:`matplotlib.figure.Figure`; :func:`save` writes it (SVG for plots,
PNG for image mosaics) and :func:`data_uri` embeds it in a self-contained page. Volumes are
``(X, Y, Z)`` arrays in RAS voxel order (the template grid). Slices are shown in neurological
convention: the subject's right on the right of the picture, anterior up in axial views, superior up
in coronal and sagittal views.
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
from matplotlib import colormaps  # noqa: E402
from matplotlib.colors import TwoSlopeNorm  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from ..bids.atomic import atomic_write_bytes  # noqa: E402

PLANES = ("axial", "coronal", "sagittal")
_AXIS = {"sagittal": 0, "coronal": 1, "axial": 2}
#: Voxel axis letter of the slice index shown in titles.
_LETTER = {"sagittal": "x", "coronal": "y", "axial": "z"}
BASE_FONT = 12
matplotlib.rcParams.update({
    "font.size": BASE_FONT, "axes.titlesize": BASE_FONT + 1, "axes.labelsize": BASE_FONT,
    "xtick.labelsize": BASE_FONT - 1, "ytick.labelsize": BASE_FONT - 1, "legend.fontsize": BASE_FONT - 1,
    "figure.titlesize": BASE_FONT + 2, "svg.fonttype": "none", "axes.spines.top": False,
    "axes.spines.right": False,
})


def site_colors(sites: Sequence[str]) -> dict[str, tuple]:
    """A distinct colour per site (tab10, then tab20)."""
    cmap = colormaps["tab10" if len(sites) <= 10 else "tab20"]
    return {site: cmap(i % cmap.N) for i, site in enumerate(sites)}


def save(fig: Figure, path: str | os.PathLike) -> Path:
    """Write ``fig`` atomically as SVG or PNG (by the suffix of ``path``)."""
    path = Path(path)
    return atomic_write_bytes(path, to_bytes(fig, path.suffix.lstrip(".")))


def to_bytes(fig: Figure, fmt: str = "png") -> bytes:
    buffer = io.BytesIO()
    # the figures lay themselves out (constrained layout), so one draw is enough (no bbox_inches="tight")
    # no date, and SVG element ids from a fixed salt: the same figure gives the same bytes in every run
    with matplotlib.rc_context({"svg.hashsalt": "hcld-bids"}):
        fig.savefig(buffer, format=fmt, dpi=100, metadata={"Date": None} if fmt == "svg" else None)
    return buffer.getvalue()


def render(name: str, args: tuple, path: str | os.PathLike) -> str:
    """Draw the figure of function ``name`` of this module with ``args`` and write it to ``path`` (a job that a
    worker process can run: :func:`hcld_bids.reports.participant.write_participant_report` hands its figures
    to a process pool this way)."""
    return str(save(globals()[name](*args), path))


def data_uri(fig: Figure, fmt: str = "png") -> str:
    """``data:image/...;base64,...`` of the figure (self-contained HTML)."""
    mime = "image/svg+xml" if fmt == "svg" else "image/png"
    return f"data:{mime};base64,{base64.b64encode(to_bytes(fig, fmt)).decode('ascii')}"


def orient(slice_2d: np.ndarray) -> np.ndarray:
    """A slice of a RAS volume turned for display with ``origin='lower'`` (first axis horizontal)."""
    return np.asarray(slice_2d).T


def take(volume: np.ndarray, plane: str, index: int) -> np.ndarray:
    return orient(np.take(volume, index, axis=_AXIS[plane]))


def brain_slices(mask: np.ndarray, plane: str, count: int) -> list[int]:
    """``count`` slice indices spread over the brain's extent along ``plane`` (10 % margins)."""
    axis = _AXIS[plane]
    present = np.nonzero(np.asarray(mask).any(axis=tuple(a for a in range(3) if a != axis)))[0]
    if present.size == 0:
        return list(np.linspace(0, mask.shape[axis] - 1, count + 2).astype(int)[1:-1])
    low, high = present.min(), present.max()
    margin = 0.1 * (high - low)
    return [int(round(v)) for v in np.linspace(low + margin, high - margin, count)]


def _image_axis(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def mosaic(rows: Mapping[str, np.ndarray], mask: np.ndarray, plane: str, count: int = 6,
           vmax: float = 1.0) -> Figure:
    """Rows of ``count`` slices along ``plane`` (one row per labelled volume), same grey window."""
    indices = brain_slices(mask, plane, count)
    first = take(next(iter(rows.values())), plane, indices[0])
    aspect = first.shape[0] / first.shape[1]
    fig = Figure(figsize=(1.9 * count + 1.2, 1.9 * aspect * len(rows) + 0.5), layout="constrained")
    axes = fig.subplots(len(rows), count, squeeze=False)
    for r, (label, volume) in enumerate(rows.items()):
        for c, index in enumerate(indices):
            ax = axes[r, c]
            ax.imshow(take(volume, plane, index), cmap="gray", vmin=0, vmax=vmax, origin="lower",
                      interpolation="nearest")
            _image_axis(ax)
            if r == 0:
                ax.set_title(f"{_LETTER[plane]} = {index}", fontsize=BASE_FONT - 1)
        axes[r, 0].set_ylabel(label, fontsize=BASE_FONT)
    fig.suptitle(f"{plane.capitalize()} slices")
    return fig


def _centre(mask: np.ndarray) -> tuple[int, int, int]:
    coords = np.argwhere(np.asarray(mask) > 0)
    return tuple(int(c) for c in (coords.mean(axis=0) if coords.size else np.array(mask.shape) // 2))


def three_planes(mask: np.ndarray, centre: Sequence[int] | None = None):
    """(plane, index) of the three orthogonal slices through ``centre`` (default: brain centre)."""
    centre = centre if centre is not None else _centre(mask)
    return [(plane, int(centre[_AXIS[plane]])) for plane in PLANES]


def difference_map(before: np.ndarray, after: np.ndarray, mask: np.ndarray) -> Figure:
    """``after - before`` inside the brain, three planes, diverging map with a labelled colour bar."""
    brain = np.asarray(mask) > 0
    diff = np.where(brain, np.asarray(after, float) - np.asarray(before, float), np.nan)
    limit = float(np.nanpercentile(np.abs(diff), 99)) if brain.any() else 1.0
    limit = max(limit, 1e-3)
    fig = Figure(figsize=(13, 4.6), layout="constrained")
    axes = fig.subplots(1, 3)
    image = None
    for ax, (plane, index) in zip(axes, three_planes(brain)):
        ax.imshow(take(np.where(brain, before, 0), plane, index), cmap="gray", vmin=0, vmax=1, origin="lower")
        image = ax.imshow(take(diff, plane, index), cmap="RdBu_r", norm=TwoSlopeNorm(0, -limit, limit),
                          origin="lower", interpolation="nearest")
        ax.set_title(f"{plane} ({_LETTER[plane]} = {index})")
        _image_axis(ax)
    bar = fig.colorbar(image, ax=axes, shrink=0.85, pad=0.01)
    bar.set_label("harmonized − input (scaled intensity)")
    return fig


def mask_overlay(preproc: np.ndarray, mask: np.ndarray) -> Figure:
    """The whole-head preprocessed image with the brain mask outline (red), three planes."""
    fig = Figure(figsize=(13, 4.4), layout="constrained")
    axes = fig.subplots(1, 3)
    for ax, (plane, index) in zip(axes, three_planes(mask)):
        ax.imshow(take(preproc, plane, index), cmap="gray", vmin=0, vmax=1, origin="lower")
        ax.contour(take(np.asarray(mask, float), plane, index), levels=[0.5], colors=["#ff3030"], linewidths=1.4)
        ax.set_title(f"{plane} ({_LETTER[plane]} = {index})")
        _image_axis(ax)
    return fig


def structure_map_figure(preproc: np.ndarray, mask: np.ndarray, block_scores: np.ndarray, block: int,
                         threshold: float) -> Figure:
    """Local structure preservation per block over the input, through the worst block."""
    upsampled = np.kron(block_scores, np.ones((block, block, block)))[tuple(slice(0, n) for n in preproc.shape)]
    finite = np.isfinite(block_scores)
    if finite.any():
        worst = np.unravel_index(np.nanargmin(np.where(finite, block_scores, np.inf)), block_scores.shape)
        centre = [int(w * block + block // 2) for w in worst]
        centre = [min(c, n - 1) for c, n in zip(centre, preproc.shape)]
    else:
        centre = None
    fig = Figure(figsize=(13, 4.6), layout="constrained")
    axes = fig.subplots(1, 3)
    image = None
    for ax, (plane, index) in zip(axes, three_planes(mask, centre)):
        ax.imshow(take(np.where(mask > 0, preproc, 0), plane, index), cmap="gray", vmin=0, vmax=1, origin="lower")
        image = ax.imshow(take(upsampled, plane, index), cmap="RdYlGn", vmin=0.5, vmax=1.0, alpha=0.55,
                          origin="lower", interpolation="nearest")
        ax.set_title(f"{plane} ({_LETTER[plane]} = {index})")
        _image_axis(ax)
    bar = fig.colorbar(image, ax=axes, shrink=0.85, pad=0.01)
    bar.set_label(f"structure preservation per {block}-voxel block")
    bar.ax.axhline(threshold, color="black", linewidth=2)
    return fig


def histogram_figure(edges: Sequence[float], curves: Mapping[str, Sequence[float]],
                     styles: Mapping[str, dict] | None = None, title: str | None = None) -> Figure:
    """Brain-intensity densities (one line per curve) over [0, 1]."""
    edges = np.asarray(edges, float)
    centres = 0.5 * (edges[:-1] + edges[1:])
    fig = Figure(figsize=(8, 4.2), layout="constrained")
    ax = fig.subplots()
    for label, density in curves.items():
        ax.plot(centres, density, label=label, linewidth=2, **(styles or {}).get(label, {}))
    ax.set_xlabel("scaled intensity")
    ax.set_ylabel("density (brain voxels)")
    ax.set_xlim(0, 1)
    ax.set_ylim(bottom=0)
    ax.legend(frameon=False)
    if title:
        ax.set_title(title)
    return fig


def site_histograms(edges, before: Mapping[str, np.ndarray], after: Mapping[str, np.ndarray],
                    targets: Mapping[str, np.ndarray], colors: Mapping[str, tuple]) -> Figure:
    """Mean brain-intensity density per site before and after harmonization, target style dashed."""
    edges = np.asarray(edges, float)
    centres = 0.5 * (edges[:-1] + edges[1:])
    fig = Figure(figsize=(13, 4.6), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    top = 0.0
    for ax, title, curves in ((axes[0], "before (preprocessed input)", before), (axes[1], "after (harmonized)", after)):
        for site, density in curves.items():
            ax.plot(centres, density, color=colors[site], linewidth=2, label=site)
            top = max(top, float(np.max(density)))
        for name, density in targets.items():
            ax.plot(centres, density, color="black", linestyle="--", linewidth=1.8, label=f"target style: {name}")
            top = max(top, float(np.max(density)))
        ax.set_title(title)
        ax.set_xlabel("scaled intensity")
        ax.set_xlim(0, 1)
    axes[0].set_ylabel("mean density (brain voxels)")
    axes[0].set_ylim(0, top * 1.05)
    handles, labels = axes[1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center", frameon=False)
    return fig


def distance_matrices(sites: Sequence[str], before: np.ndarray, after: np.ndarray) -> Figure:
    """Site-by-site Wasserstein distances (in % of the intensity range) before and after."""
    n = len(sites)
    size = max(4.5, 0.6 * n + 2.5)
    fig = Figure(figsize=(2 * size + 1.2, size), layout="constrained")
    axes = fig.subplots(1, 2)
    vmax = max(float(np.nanmax(before)) if before.size else 0, float(np.nanmax(after)) if after.size else 0, 1e-6)
    image = None
    for ax, title, matrix in ((axes[0], "before", before), (axes[1], "after", after)):
        image = ax.imshow(100 * matrix, cmap="viridis", vmin=0, vmax=100 * vmax)
        ax.set_xticks(range(n), sites, rotation=45, ha="right")
        ax.set_yticks(range(n), sites)
        ax.set_title(title)
        ax.spines[:].set_visible(False)
        if n <= 12:
            for i in range(n):
                for j in range(n):
                    value = 100 * matrix[i, j]
                    ax.text(j, i, f"{value:.1f}", ha="center", va="center", fontsize=BASE_FONT - 1,
                            color="white" if value < 60 * vmax else "black")
    bar = fig.colorbar(image, ax=axes, shrink=0.85, pad=0.01)
    bar.set_label("Wasserstein-1 distance (% of intensity range)")
    return fig


def classifier_bars(results: Sequence[Mapping]) -> Figure:
    """Cross-validated site-classification accuracy before/after per feature set, with chance level.

    ``results``: ``{"features", "before", "after", "before_sd", "after_sd", "chance"}`` per feature set.
    """
    fig = Figure(figsize=(8, 4.8), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(results))
    width = 0.36
    before = [r["before"] for r in results]
    after = [r["after"] for r in results]
    ax.bar(x - width / 2, before, width, yerr=[r.get("before_sd", 0) for r in results], color="#9e9e9e",
           label="before", capsize=4)
    ax.bar(x + width / 2, after, width, yerr=[r.get("after_sd", 0) for r in results], color="#1f77b4",
           label="after", capsize=4)
    for i, r in enumerate(results):
        ax.hlines(r["chance"], i - 0.45, i + 0.45, colors="#d62728", linestyles="--", linewidth=2,
                  label="chance (majority site)" if i == 0 else None)
        # values inside the bars, clear of the error bars
        for offset, value in ((-width / 2, before[i]), (width / 2, after[i])):
            ax.text(i + offset, 0.03, f"{value:.2f}", ha="center", va="bottom", color="white", fontweight="bold")
    ax.set_xticks(x, [r["features"] for r in results])
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("site classification accuracy")
    fig.legend(loc="outside lower center", frameon=False, ncols=3)
    return fig


def embedding(before: np.ndarray, after: np.ndarray, sites: Sequence[str], colors: Mapping[str, tuple],
              explained: Sequence[float] | None = None) -> Figure:
    """2D embedding (shared axes) of image features coloured by site, before and after."""
    fig = Figure(figsize=(13, 5.2), layout="constrained")
    axes = fig.subplots(1, 2, sharex=True, sharey=True)
    sites = np.asarray(sites)
    size = 40 if len(sites) <= 200 else 12
    for ax, title, coords in ((axes[0], "before", before), (axes[1], "after", after)):
        for site in dict.fromkeys(sites):
            chosen = sites == site
            ax.scatter(coords[chosen, 0], coords[chosen, 1], s=size, color=colors[site], label=site,
                       alpha=0.8, edgecolors="none")
        ax.set_title(title)
        ax.set_xlabel("PC 1" + (f" ({100 * explained[0]:.0f} %)" if explained is not None else ""))
    axes[0].set_ylabel("PC 2" + (f" ({100 * explained[1]:.0f} %)" if explained is not None else ""))
    handles, labels = axes[1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center", frameon=False, markerscale=1.5)
    return fig


def age_scatter(age: np.ndarray, predicted_before: np.ndarray, predicted_after: np.ndarray,
                stats_before: Mapping, stats_after: Mapping, sites: Sequence[str],
                colors: Mapping[str, tuple]) -> Figure:
    """Cross-validated age predictions from image features against true age, before and after."""
    fig = Figure(figsize=(12, 5), layout="constrained")
    axes = fig.subplots(1, 2, sharex=True, sharey=True)
    sites = np.asarray(sites)
    low, high = float(np.min(age)), float(np.max(age))
    for ax, title, predicted, stats in ((axes[0], "before", predicted_before, stats_before),
                                        (axes[1], "after", predicted_after, stats_after)):
        for site in dict.fromkeys(sites):
            chosen = sites == site
            ax.scatter(age[chosen], predicted[chosen], s=30, color=colors[site], label=site, alpha=0.8,
                       edgecolors="none")
        ax.plot([low, high], [low, high], color="black", linewidth=1, linestyle=":")
        ax.set_title(f"{title}: r = {stats['r']:.2f}, MAE = {stats['mae']:.1f} years")
        ax.set_xlabel("age (years)")
    axes[0].set_ylabel("predicted age (years, cross-validated)")
    handles, labels = axes[1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center", frameon=False)
    return fig


def site_mosaic(rows: Mapping[str, Sequence[tuple[np.ndarray, np.ndarray]]]) -> Figure:
    """Per site (row): pairs of mid-axial slices, before | after, of up to a few images."""
    n_cols = max((len(pairs) for pairs in rows.values()), default=1)
    first = next((pairs[0][0] for pairs in rows.values() if pairs), np.zeros((2, 2)))
    aspect = first.shape[0] / first.shape[1]
    fig = Figure(figsize=(2 * 1.6 * n_cols + 1.0, 1.6 * aspect * len(rows) + 0.6), layout="constrained")
    axes = fig.subplots(len(rows), 2 * n_cols, squeeze=False)
    for r, (site, pairs) in enumerate(rows.items()):
        for c in range(n_cols):
            for k in range(2):
                ax = axes[r, 2 * c + k]
                _image_axis(ax)
                if c < len(pairs):
                    ax.imshow(pairs[c][k], cmap="gray", vmin=0, vmax=1, origin="lower", interpolation="nearest")
                if r == 0 and c < len(pairs):
                    ax.set_title("before" if k == 0 else "after", fontsize=BASE_FONT - 1)
        axes[r, 0].set_ylabel(site, fontsize=BASE_FONT, rotation=0, ha="right", va="center")
    return fig


def thumbnail(before: np.ndarray, after: np.ndarray) -> Figure:
    """Small before | after pair of one slice (outlier table)."""
    aspect = before.shape[0] / before.shape[1]
    fig = Figure(figsize=(3.2, 1.6 * aspect))
    axes = fig.subplots(1, 2)
    fig.subplots_adjust(0, 0, 1, 1, 0.02, 0)
    for ax, image in zip(axes, (before, after)):
        ax.imshow(image, cmap="gray", vmin=0, vmax=1, origin="lower", interpolation="nearest")
        ax.set_axis_off()
    return fig
