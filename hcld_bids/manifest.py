"""What a model bundle's manifest says about its data, for every text written from it.

A bundle has style prototypes of several sites, but its networks were trained on the images of some of
them only: ``train --add-site-prototypes`` adds sites without any training. The training record is
``manifest["training"]["data"]`` (``{"n_images", "n_participants", "sites": {site: n}}``, written by the
train level); a site absent from it, or flagged ``added_without_training`` in ``manifest["sites"]``, has a
prototype only. Methods text, warnings and summaries read these two lists through this module and never
add them up. Reads plain dictionaries (no torch, no model code).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

#: Weight files whose content makes a model "the demo model" (its networks), whatever prototypes it has.
NETWORK_FILES = ("autoencoder.safetensors", "unet.safetensors")


def training_record(manifest: dict | None) -> dict | None:
    """``manifest["training"]["data"]`` when the manifest has one, else None."""
    data = ((manifest or {}).get("training") or {}).get("data")
    return data if isinstance(data, dict) and isinstance(data.get("sites"), dict) else None


def added_sites(manifest: dict | None) -> set[str]:
    """Sites flagged ``added_without_training`` in ``manifest["sites"]``."""
    return {site for site, entry in ((manifest or {}).get("sites") or {}).items()
            if isinstance(entry, dict) and entry.get("added_without_training")}


def trained_sites(manifest: dict | None) -> dict[str, int]:
    """``{site: n_images}`` of the training data; sites flagged ``added_without_training`` never count."""
    record = training_record(manifest) or {}
    added = added_sites(manifest)
    out = {}
    for site, count in (record.get("sites") or {}).items():
        if site in added:
            continue
        try:
            out[str(site)] = int(count)
        except (TypeError, ValueError):
            continue
    return dict(sorted(out.items()))


def trained_image_count(manifest: dict | None) -> int:
    """Number of images the networks were trained on (of the training sites that still count)."""
    record = training_record(manifest) or {}
    trained = trained_sites(manifest)
    if not added_sites(manifest) & set(record.get("sites") or {}):
        try:
            return int(record.get("n_images"))
        except (TypeError, ValueError):
            pass
    return sum(trained.values())


def prototype_sites(manifest: dict | None) -> dict[str, int | None]:
    """``{site: n_images}`` of the sites with a prototype only (their images were never trained on);
    ``None`` where the manifest does not say how many images made the prototype. Without a training record
    only the sites flagged ``added_without_training`` are known to be such (see :func:`unrecorded_sites`)."""
    trained = trained_sites(manifest)
    recorded = training_record(manifest) is not None
    added = added_sites(manifest)
    out = {}
    for site, entry in ((manifest or {}).get("sites") or {}).items():
        if site in trained or (not recorded and site not in added):
            continue
        entry = entry if isinstance(entry, dict) else {}
        count = entry.get("n_images") or (entry.get("prototype") or {}).get("n_images")
        try:
            out[str(site)] = int(count) if count is not None else None
        except (TypeError, ValueError):
            out[str(site)] = None
    return dict(sorted(out.items()))


def unrecorded_sites(manifest: dict | None) -> list[str]:
    """Sites of a manifest without training record that are not flagged as added: whether the networks saw
    their images is unknown (bundles not written by the train level)."""
    if training_record(manifest) is not None:
        return []
    added = added_sites(manifest)
    return sorted(site for site in ((manifest or {}).get("sites") or {}) if site not in added)


def describe_sites(manifest: dict | None) -> str:
    """One phrase for warnings and summaries: what the networks were trained on, and which sites have a
    prototype only, e.g. ``trained on 135 images from siteA (34), siteB (34); prototypes only: Oslo (2 images)``."""
    trained = trained_sites(manifest)
    parts = []
    if trained:
        parts.append(f"trained on {trained_image_count(manifest)} images from "
                     + ", ".join(f"{site} ({n})" for site, n in trained.items()))
    elif training_record(manifest) is None:
        unknown = unrecorded_sites(manifest)
        parts.append("training data not recorded in its manifest" + (
            f" (prototypes of {', '.join(unknown)})" if unknown else ""))
    added = prototype_sites(manifest)
    if added:
        parts.append("prototypes only (never trained on): " + ", ".join(
            f"{site} ({n} image{'s' if n != 1 else ''})" if n is not None else site for site, n in added.items()))
    return "; ".join(parts)


@lru_cache(maxsize=1)
def _demo_network_hashes() -> tuple | None:
    from .config import DEMO_MODEL_DIR

    try:
        weights = json.loads((Path(DEMO_MODEL_DIR) / "manifest.json").read_text()).get("weights") or {}
    except (OSError, ValueError):
        return None
    hashes = tuple(weights.get(name) for name in NETWORK_FILES)
    return hashes if all(hashes) else None


def is_demo_model(manifest: dict | None) -> bool:
    """Whether a bundle's networks are those of the demo model shipped with the package (a copy of it with
    added site prototypes counts: its networks are the demo's)."""
    demo = _demo_network_hashes()
    weights = (manifest or {}).get("weights") or {}
    return demo is not None and tuple(weights.get(name) for name in NETWORK_FILES) == demo
