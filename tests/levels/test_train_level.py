"""The train level's checks that run before any preprocessing (cheap: they end the run first)."""

from __future__ import annotations

import json

from hcld_bids.cli.run import main
from hcld_bids.config import DEMO_MODEL_DIR
from hcld_bids.testing import make_bids_dataset


def test_adding_prototypes_under_the_name_of_a_trained_site_is_an_error_naming_both(tmp_path, scans_dir, capsys):
    # the demo model was trained on siteA..siteD; "site A" becomes the label siteA
    bids = make_bids_dataset(tmp_path / "bids", scans_dir=scans_dir, site_labels={"uih": "site A"})
    code = main([str(bids), str(tmp_path / "out"), "train", "--add-site-prototypes", "-w", str(tmp_path / "work"),
                 "--skip-bids-validation", "--nprocs", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 65
    assert len(err) == 1 and err[0].startswith(
        "hcld-bids: error: the site 'site A' (participants.tsv) of sub-03/anat/sub-03_T1w.nii.gz has the label "
        "'siteA', which is a site the model ")
    trained = json.loads((DEMO_MODEL_DIR / "manifest.json").read_text())["training"]["data"]["sites"]
    assert f"was trained on ({trained['siteA']} images)" in err[0]
    assert not (tmp_path / "out" / "models").exists()
