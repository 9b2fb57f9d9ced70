import re
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "hcld_bids" / "model"


def test_model_core_imports_nothing_from_nipype_or_bids():
    pattern = re.compile(r"nipype|from bids|import bids")
    offenders = [str(p) for p in PKG.rglob("*.py") if pattern.search(p.read_text())]
    assert offenders == []
