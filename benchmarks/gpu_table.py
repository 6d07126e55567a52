"""Write the README's GPU table from benchmark runs: the card, its driver, and every variant's
P50, P99, throughput and achieved TFLOP/s against the card's data-sheet peak.

    python benchmarks/gpu_table.py OUT/table.md RUN_DIR [RUN_DIR ...]

Each RUN_DIR is a run folder with the benchmark notebook's results (summary.json). Rows on the
GPU come first; a dry run on a CPU writes the same table with the CPU named, so the script is
checked where there is no GPU.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def table(run_dirs: list[Path]) -> str:
    from lab2prod.studies.benchmark import device_peak_tflops

    lines, machine = [], {}
    for run_dir in run_dirs:
        summary = json.loads((run_dir / "summary.json").read_text())
        bench = summary["results"]["benchmark"]
        machine = bench.get("machine") or summary.get("environment") or {}
        model = bench["model"]["model"]
        peak = device_peak_tflops(machine.get("gpu"))
        rows = sorted(bench["rows"], key=lambda r: (not r["device"].startswith("cuda"), r["variant"], r["batch_size"]))
        for row in rows:
            if row.get("error"):
                lines.append(f"| {model} | {row['device']} | {row['variant']} | {row['batch_size']} | - | - | - | - | "
                             f"{row['error'][:80]} |")
                continue
            tflops = (row.get("gflops_per_s") or 0) / 1e3
            on_gpu = row["device"].startswith("cuda")
            share = f"{100 * tflops / peak[0]:.1f}% of {peak[0]:g} (fp32)" if peak and on_gpu else "-"
            lines.append(f"| {model} | {row['device']} | {row['variant']} | {row['batch_size']} | "
                         f"{row['p50_ms']:.3g} | {row['p99_ms']:.3g} | {row['throughput_per_s']:.4g} | {tflops:.3g} | "
                         f"{share}{'' if row['correct'] else ' (wrong: not ranked)'} |")
    card = machine.get("gpu") or f"no GPU: {machine.get('cpu', 'CPU')} (dry run)"
    head = [f"Card: {card}; driver {machine.get('driver') or '-'}; CUDA {machine.get('cuda') or '-'}; "
            f"torch {machine.get('torch', '-')}", "",
            "| model | device | variant | batch | p50 ms | p99 ms | throughput /s | achieved TFLOP/s | of peak |",
            "|---|---|---|---|---|---|---|---|---|"]
    return "\n".join(head + lines) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__.strip().splitlines()[3].strip(), file=sys.stderr)
        return 2
    out = Path(argv[0])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table([Path(p) for p in argv[1:]]))
    print(out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
