import numpy as np
import pytest
import torch

from hcld_bids.model import (Harmonizer, InputVolumeError, UnknownSiteError, compute_site_prototype, load_bundle,
                             save_bundle)

GRID = (16, 32, 16)


@pytest.fixture
def harmonizer(tmp_path, tiny_models):
    ae, unet = tiny_models
    vols = [np.random.default_rng(i).random(GRID, dtype=np.float32) for i in range(2)]
    save_bundle(tmp_path / "b", ae, unet, 1.3, {"A": compute_site_prototype(ae, vols, 1.3)})
    return Harmonizer(load_bundle(tmp_path / "b"))


def _volume(seed=5):
    return np.random.default_rng(seed).random(GRID, dtype=np.float32)


def test_output_has_input_shape_and_lies_in_unit_range(harmonizer):
    out = harmonizer.harmonize(_volume(), harmonizer.style_from_site("A"), inversion_steps=3, sampling_steps=2)
    assert out.shape == GRID and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert set(harmonizer.last_timings) == {"restore", "encode", "inversion", "sampling", "decode"}
    assert harmonizer.last_timings["restore"] == 0.0  # no restoration prior in this bundle


def test_same_seed_gives_the_same_output(harmonizer, tmp_path):
    style = harmonizer.style_from_site("A")
    a = harmonizer.harmonize(_volume(), style, inversion_steps=3, sampling_steps=2, seed=7)
    b = harmonizer.harmonize(_volume(), style, inversion_steps=3, sampling_steps=2, seed=7)
    other = Harmonizer(load_bundle(tmp_path / "b"))
    c = other.harmonize(_volume(), other.style_from_site("A"), inversion_steps=3, sampling_steps=2, seed=7)
    assert np.array_equal(a, b) and np.array_equal(a, c)


def test_output_is_zero_outside_the_mask(harmonizer):
    mask = np.zeros(GRID, np.uint8)
    mask[4:12, 8:24, 4:12] = 1
    out = harmonizer.harmonize(_volume(), harmonizer.style_from_site("A"), inversion_steps=2, sampling_steps=2,
                               mask=mask)
    assert not out[mask == 0].any()


def test_reference_style_is_encoded_once_per_distinct_volume(harmonizer, monkeypatch):
    calls = []
    encode = harmonizer.encode
    monkeypatch.setattr(harmonizer, "encode", lambda x: calls.append(1) or encode(x))
    ref = _volume(9)
    s1 = harmonizer.style_from_volume(ref)
    s2 = harmonizer.style_from_volume(ref.copy())
    assert s1 is s2 and len(calls) == 1 and s1.source.startswith("reference:")
    harmonizer.style_from_volume(_volume(10))
    assert len(calls) == 2


def test_style_changes_the_result(harmonizer):
    vol = _volume()
    a = harmonizer.harmonize(vol, harmonizer.style_from_site("A"), inversion_steps=3, sampling_steps=2)
    b = harmonizer.harmonize(vol, harmonizer.style_from_volume(_volume(11) * 0.2), inversion_steps=3,
                             sampling_steps=2)
    assert not np.allclose(a, b)


def test_batch_equals_one_by_one(harmonizer):
    style = harmonizer.style_from_site("A")
    vols = [_volume(1), _volume(2)]
    batch = harmonizer.harmonize_batch(vols, style, inversion_steps=2, sampling_steps=2)
    for v, b in zip(vols, batch):
        np.testing.assert_allclose(harmonizer.harmonize(v, style, inversion_steps=2, sampling_steps=2), b, atol=1e-4)


def test_readapting_the_condition_is_an_option_that_changes_the_path(harmonizer):
    style = harmonizer.style_from_site("A")
    a = harmonizer.harmonize(_volume(), style, inversion_steps=3, sampling_steps=2)
    b = harmonizer.harmonize(_volume(), style, inversion_steps=3, sampling_steps=2, readapt_condition=True)
    assert not np.allclose(a, b)


def test_progress_reports_every_unet_call(harmonizer):
    seen = []
    harmonizer.harmonize(_volume(), harmonizer.style_from_site("A"), inversion_steps=3, sampling_steps=2,
                         progress=lambda stage, i, n: seen.append((stage, i, n)))
    assert seen == [("inversion", 1, 3), ("inversion", 2, 3), ("inversion", 3, 3), ("sampling", 1, 2),
                    ("sampling", 2, 2)]


def test_bad_inputs_are_refused_with_clear_errors(harmonizer):
    style = harmonizer.style_from_site("A")
    with pytest.raises(InputVolumeError, match="3D"):
        harmonizer.harmonize(np.zeros((16, 16)), style)
    with pytest.raises(InputVolumeError, match="divisible by 16"):
        harmonizer.harmonize(np.zeros((16, 30, 16), np.float32), style)
    with pytest.raises(InputVolumeError, match="NaN"):
        harmonizer.harmonize(np.full(GRID, np.nan, np.float32), style)
    with pytest.raises(InputVolumeError, match="another grid"):
        harmonizer.harmonize(np.zeros((16, 16, 16), np.float32), style)
    with pytest.raises(InputVolumeError, match="mask shape"):
        harmonizer.harmonize(np.zeros(GRID, np.float32), style, mask=np.ones((16, 16, 16)))
    with pytest.raises(UnknownSiteError, match="A"):
        harmonizer.style_from_site("nope")


def test_accepts_a_torch_tensor(harmonizer):
    out = harmonizer.harmonize(torch.from_numpy(_volume()), harmonizer.style_from_site("A"), inversion_steps=2,
                               sampling_steps=2)
    assert isinstance(out, np.ndarray) and out.shape == GRID
