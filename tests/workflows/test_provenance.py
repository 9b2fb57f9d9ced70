"""Sidecar keys of the inference regime (hcld_bids.workflows.base._regime_provenance)."""

import pytest

from hcld_bids.model.harmonize import Regime
from hcld_bids.workflows.base import _regime_provenance


@pytest.mark.parametrize(("calibrate", "reference", "images", "added", "weight"), [
    (True, False, 34, False, 1.0),   # toward a trained site: always full
    (True, False, 2, True, 0.75),    # toward a site added from 2 scans without training
    (True, False, 4, True, 0.875),
    (True, True, 34, False, 0.5),    # toward a reference image: the regime's reference_calibration
    (False, True, 1, False, 0.0),    # no calibration at all
])
def test_sidecar_records_the_calibration_weight_that_ran(calibrate, reference, images, added, weight):
    regime = Regime(kind="dual", strength=0.1, inversion_steps=10, sampling_steps=10, detail=0.75,
                    calibrate=calibrate, reference_calibration=0.5).to_dict()
    keys = _regime_provenance(regime, reference=reference, target_images=images, target_added=added)
    assert keys["IntensityCalibration"] is calibrate
    assert keys["IntensityCalibrationWeight"] == pytest.approx(weight)
    assert keys["Regime"]["reference_calibration"] == 0.5
    assert (keys["InferenceRegime"], keys["DDIMInversionSteps"], keys["DetailReinjection"]) == ("dual", 10, 0.75)


def test_regime_of_an_older_bundle_without_the_setting_calibrates_fully():
    regime = {"kind": "adain", "strength": 1.0, "inversion_steps": 30, "sampling_steps": 10, "calibrate": True}
    assert _regime_provenance(regime, reference=True)["IntensityCalibrationWeight"] == 1.0
