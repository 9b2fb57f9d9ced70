import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_harmonize_speed_quick_prints_and_writes_the_table(tmp_path):
    out = tmp_path / "speed.tsv"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "harmonize_speed.py"), "--quick", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "random weights" in proc.stdout
    with open(out, newline="") as f:
        table = list(csv.DictReader(f, delimiter="\t"))
    rows = {r["path"]: r for r in table}
    assert set(rows) == {"ours", "reference", "speedup", "ours-process", "throughput"}
    # one throughput row per batch size (--quick: 1 and 2 volumes), volumes per second = batch / seconds
    throughput = [r for r in table if r["path"] == "throughput"]
    assert [r["batch"] for r in throughput] == ["1", "2"]
    for r in throughput:  # both figures are written to 3 decimals: allow that rounding, nothing more
        vps, total = float(r["volumes_per_s"]), float(r["total_s"])
        assert abs(vps * total - int(r["batch"])) <= 5e-4 * (vps + total) + 1e-6
    for path in ("ours", "reference"):
        parts = [float(rows[path][k]) for k in ("encode_s", "inversion_s", "sampling_s", "decode_s")]
        assert all(p > 0 for p in parts) and float(rows[path]["total_s"]) >= sum(parts) * 0.99
        assert rows[path]["unet_calls"] == "5"
    assert float(rows["speedup"]["total_s"]) > 0
    assert float(rows["ours-process"]["peak_rss_mib"]) > 0
    assert all(row["peak_gpu_mib"] == "" for row in rows.values())  # CPU run: no GPU figure is made up
    assert "max rel |ours - reference|" in rows["reference"]["note"]
