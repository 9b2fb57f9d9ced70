"""The Harmonizer's CUDA path: bf16 weights cast once, UNet calls replayed from CUDA graphs, batches.

On the CPU, the static-buffer UNet call (what a CUDA graph replays) runs with a capture that calls the
function again and writes its result into the static output, as a graph replay does; it must give exactly the
eager path's output for every regime. The tests marked ``cuda`` run only where a GPU is present: they hold the
GPU path (bf16, CUDA graphs, batches) to the tolerance stated in :data:`GPU_TOLERANCE` against float32.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from hcld_bids.model import Harmonizer, compute_site_prototype, load_bundle, save_bundle
from hcld_bids.model.harmonize import (REGIMES, Regime, StaticUNetCall, cast_for_autocast, per_volume_noise)

GRID = (16, 32, 16)
#: What the GPU path (bf16 weights and autocast, CUDA graphs) may differ from float32 without graphs on the
#: same GPU, on the [0, 1] intensity scale, for the bundled demo model's own regime on a 2 mm head: the mean
#: absolute difference and the 99.9th percentile of the absolute difference inside the head.
GPU_TOLERANCE = {"mean": 0.01, "p99.9": 0.1}

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _volume(seed=5):
    vol = np.random.default_rng(seed).random(GRID, dtype=np.float32)
    vol[:2] = 0.0
    return vol


def eager_capture(fn):
    """A CPU stand-in for :func:`capture_cuda_graph`: ``replay()`` recomputes into the static output."""
    output = fn()

    def replay():
        output.copy_(fn())

    return replay, output


@pytest.fixture
def bundle_dir(tmp_path, tiny_models):
    ae, unet = tiny_models
    save_bundle(tmp_path / "b", ae, unet, 1.3, {"A": compute_site_prototype(ae, [_volume(i) for i in range(2)], 1.3)})
    return tmp_path / "b"


def _static(h: Harmonizer) -> Harmonizer:
    h.cuda_graphs = True
    h._capture = eager_capture
    return h


@pytest.mark.parametrize("kind,readapt", [(kind, False) for kind in REGIMES] + [("full", True), ("dual", True)])
def test_static_unet_calls_give_exactly_the_eager_output_for_every_regime(bundle_dir, kind, readapt):
    regime = Regime(kind=kind, strength=0.4, inversion_steps=3, sampling_steps=2, readapt_condition=readapt)
    eager = Harmonizer(load_bundle(bundle_dir))
    static = _static(Harmonizer(load_bundle(bundle_dir)))
    vols = [_volume(1), _volume(2)]
    for h in (eager, static):
        h.outputs = [h.harmonize(vols[0], h.style_from_site("A"), regime=regime, seed=3),
                     *h.harmonize_batch(vols, h.style_from_site("A"), regime=regime, seed=3)]
    for a, b in zip(eager.outputs, static.outputs):
        assert np.array_equal(a, b)
    if kind != "adain":  # one static call per batch size, reused by every step and every volume
        assert sorted(key[0][0] for key in static._static_calls) == [1, 2]
        assert all(call is not None for call in static._static_calls.values())


def test_a_static_call_returns_a_copy_that_the_next_replay_leaves_alone():
    calls = []

    def call(z, t, c):
        calls.append(float(t[0]))
        return z * t[:, None, None, None, None] + c

    z, c = torch.ones(2, 3, 4, 4, 4), torch.zeros(2, 3, 4, 4, 4)
    static = StaticUNetCall(call, z, c, capture=eager_capture)
    first = static(z, 5, c)
    second = static(2 * z, 7, c + 1)
    assert torch.equal(first, torch.full_like(z, 5.0)) and torch.equal(second, torch.full_like(z, 15.0))
    assert static.t.dtype == torch.float32 and static.t.shape == (2,)


def test_a_failed_capture_falls_back_to_the_eager_call_with_one_warning(bundle_dir, caplog):
    def broken(fn):
        raise RuntimeError("operation not permitted when stream is capturing")

    eager = Harmonizer(load_bundle(bundle_dir))
    h = _static(Harmonizer(load_bundle(bundle_dir)))
    h._capture = broken
    with caplog.at_level(logging.WARNING, logger="hcld_bids.model"):
        out = h.harmonize(_volume(), h.style_from_site("A"), inversion_steps=3, sampling_steps=2)
    assert np.array_equal(out, eager.harmonize(_volume(), eager.style_from_site("A"), inversion_steps=3,
                                               sampling_steps=2))
    assert list(h._static_calls.values()) == [None]
    assert sum("CUDA graph capture" in r.message for r in caplog.records) == 1


def test_cuda_graphs_are_refused_on_the_cpu(bundle_dir):
    with pytest.raises(ValueError, match="CUDA"):
        Harmonizer(load_bundle(bundle_dir), cuda_graphs=True)
    assert Harmonizer(load_bundle(bundle_dir)).cuda_graphs is False


def test_weights_cast_once_give_what_autocast_gives(tiny_models):
    """Convolutions and linear layers in bf16, normalisation in float32: under autocast the outputs are those
    of the float32 network (autocast casts the same weights to the same bf16 values at every call)."""
    _, unet = tiny_models
    z, c = torch.randn(1, 6, 8, 8, 8), torch.randn(1, 6, 8, 8, 8)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        before = unet(z, 500, c).float()
        cast = cast_for_autocast(unet)
        after = unet(z, 500, c).float()
    assert cast > 0 and cast_for_autocast(unet) == 0
    assert unet.conv_in.weight.dtype == torch.bfloat16 and unet.time_embed[0].weight.dtype == torch.bfloat16
    assert unet.out_norm.weight.dtype == torch.float32
    # the one difference: the upsampling's parity kernels are sums of weights, now summed in bf16
    assert torch.allclose(before, after, rtol=0.05, atol=0.02 * before.abs().max().item())


def test_per_volume_noise_is_the_noise_of_a_batch_of_one():
    one = per_volume_noise((1, 2, 3, 4, 5), seed=7)
    three = per_volume_noise((3, 2, 3, 4, 5), seed=7)
    assert torch.equal(one[0], torch.randn((1, 2, 3, 4, 5), generator=torch.Generator().manual_seed(7))[0])
    assert all(torch.equal(three[i], one[0]) for i in range(3))


# --------------------------------------------------------------------------------------------- GPU only

def _demo_inputs():
    from hcld_bids.config import DEMO_MODEL_DIR

    from .conftest import load_real_volume

    return DEMO_MODEL_DIR, [load_real_volume(name, shape=(80, 96, 80)) for name in
                            ("siemens_prismafit3T_xa30_s5_nonorm.nii.gz", "uih_umr770_3T_run1_2mm.nii.gz")]


@cuda
def test_gpu_path_is_within_the_stated_tolerance_of_float32():
    model, vols = _demo_inputs()
    fast = Harmonizer(load_bundle(model), device="cuda")
    exact = Harmonizer(load_bundle(model), device="cuda", autocast=False, cuda_graphs=False)
    assert fast.cuda_graphs and next(fast.unet.parameters()).dtype == torch.bfloat16
    site = sorted(fast.bundle.prototypes)[0]
    for vol in vols:
        a = fast.harmonize(vol, fast.style_from_site(site))
        b = exact.harmonize(vol, exact.style_from_site(site))
        diff = np.abs(a - b)[vol > 0.05]
        assert diff.mean() <= GPU_TOLERANCE["mean"], diff.mean()
        assert np.percentile(diff, 99.9) <= GPU_TOLERANCE["p99.9"], np.percentile(diff, 99.9)
    assert fast._static_calls and all(call is not None for call in fast._static_calls.values())


@cuda
def test_gpu_graph_replays_the_float32_unet_call():
    model, vols = _demo_inputs()
    graphed = Harmonizer(load_bundle(model), device="cuda", autocast=False)
    z = graphed.encode(graphed._to_device(vols[:1]))
    cond = graphed._condition(graphed.style_from_site(sorted(graphed.bundle.prototypes)[0]).latent, 1)
    with torch.inference_mode():
        eager = graphed._unet_eps(z.contiguous(memory_format=graphed.memory_format), 500, cond)
        replayed = graphed._static_eps_model(cond, False)(z, 500)
    assert torch.allclose(eager, replayed, rtol=1e-4, atol=1e-4 * eager.abs().max().item())


@cuda
def test_gpu_batch_equals_one_by_one_within_tolerance():
    model, vols = _demo_inputs()
    h = Harmonizer(load_bundle(model), device="cuda")
    style = h.style_from_site(sorted(h.bundle.prototypes)[0])
    for regime in (Regime(kind="sdedit", strength=0.2, sampling_steps=2), h.default_regime):
        batch = h.harmonize_batch(vols * 3, style, regime=regime, seed=5)  # 6 volumes: two autoencoder chunks
        for vol, out in zip(vols * 3, batch):
            single = h.harmonize(vol, style, regime=regime, seed=5)
            assert np.abs(out - single)[vol > 0.05].mean() <= GPU_TOLERANCE["mean"]
