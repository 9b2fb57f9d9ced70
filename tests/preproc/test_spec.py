import json

import pytest

from hcld_bids.errors import BadDataError
from hcld_bids.preproc.spec import check_preprocessing_spec, preprocessing_spec


def test_preprocessing_spec_records_template_grid_and_scaling():
    spec = preprocessing_spec("MNI152NLin6Asym", 2)
    assert spec["template"] == "MNI152NLin6Asym" and spec["resolution"] == 2
    assert spec["grid"] == {"shape": [80, 96, 80], "start": [6, 8, 0]}
    assert spec["intensity_scaling"]["low_percentile"] == 0.5
    assert spec["intensity_scaling"]["high_percentile"] == 99.5
    assert spec["registration"] == "affine"


def test_check_accepts_the_block_after_a_json_round_trip():
    spec = json.loads(json.dumps(preprocessing_spec("MNI152NLin6Asym", 1)))
    assert check_preprocessing_spec(spec, bundle="b") == spec


def test_check_names_the_bundle_and_every_mismatch_in_one_line():
    spec = json.loads(json.dumps(preprocessing_spec("MNI152NLin6Asym", 2)))
    spec["grid"]["start"] = [6, 8, 1]
    spec["intensity_scaling"]["high_percentile"] = 99.0
    with pytest.raises(BadDataError) as info:
        check_preprocessing_spec(spec, bundle="/models/hcld")
    message = str(info.value)
    assert message.startswith("/models/hcld: ") and "\n" not in message
    assert "grid.start is [6, 8, 1]" in message
    assert "intensity_scaling.high_percentile is 99.0" in message
    assert info.value.exit_code == 65


def test_check_rejects_a_block_without_template():
    with pytest.raises(BadDataError, match="lacks template"):
        check_preprocessing_spec({"resolution": 2}, bundle="b")


def test_check_reports_missing_keys():
    spec = preprocessing_spec("MNI152NLin6Asym", 2)
    del spec["intensity_scaling"]
    with pytest.raises(BadDataError, match="intensity_scaling is missing"):
        check_preprocessing_spec(spec, bundle="b")
