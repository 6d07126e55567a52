"""The GPU check script, run dry on the CPU: every step it takes on a GPU, with tiny settings."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run_writes_the_table(tmp_path):
    proc = subprocess.run([str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run", str(tmp_path / "gpu")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    table = (tmp_path / "gpu" / "gpu_table.md").read_text()
    assert table.startswith("Card: no GPU") and "(dry run)" in table
    rows = [line for line in table.splitlines() if line.startswith(("| digits_mlp", "| digits_cnn"))]
    # both models, eager and ONNX Runtime, every row measured (no error column)
    assert {tuple(r.split(" | ")[i].strip() for i in (2,)) for r in rows} == {("eager",), ("onnxruntime",)}
    assert len(rows) == 4 and all(float(r.split(" | ")[4]) > 0 for r in rows)
    assert "passed" in (tmp_path / "gpu" / "cuda_tests.txt").read_text()
