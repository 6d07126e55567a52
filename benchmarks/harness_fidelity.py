"""Does lab2prod's harness measure what torch.utils.benchmark measures? Same model, same input, one process.

    python benchmarks/harness_fidelity.py [--min-run-time 2] [--rounds 3] [--threads 1]

For each case the two timers run in alternating rounds (so a slow moment of a shared machine
hits both); each keeps its median per round and the script prints the median over rounds and
the ratio lab2prod / torch.utils.benchmark. Target: within +-5%. It also prints the overhead the
harness adds per timed call. Results go to outputs/benchmarks/harness_fidelity.json.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from torch.utils import benchmark as tub

from lab2prod.core.paths import OUTPUTS_DIR
from lab2prod.models.load import load_model
from lab2prod.studies import benchmark as bm
from lab2prod.studies.environment import machine_snapshot

CASES = [("resnet18", 1), ("digits_mlp", 16)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min-run-time", type=float, default=2.0, help="seconds per timer per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    machine = machine_snapshot()
    print(f"machine: {machine['cpu']}, {machine['cores']} cores, torch {machine['torch']}, {args.threads} thread(s)")
    results = []
    for spec, batch_size in CASES:
        loaded = load_model(spec)
        module, batch = loaded.module, loaded.make_inputs(batch_size, 0)
        ours, theirs = [], []
        for _ in range(args.rounds):
            timing = bm.measure(lambda m=module, b=batch: m(b), batch_size=batch_size, threads=args.threads,
                                min_run_time=args.min_run_time)
            ours.append(timing.stats()["p50_ms"])
            timer = tub.Timer("module(batch)", globals={"module": module, "batch": batch}, num_threads=args.threads)
            with torch.inference_mode():
                theirs.append(timer.blocked_autorange(min_run_time=args.min_run_time).median * 1e3)
        row = {"model": spec, "batch_size": batch_size, "lab2prod_p50_ms": float(np.median(ours)),
               "torch_utils_benchmark_median_ms": float(np.median(theirs)), "rounds": args.rounds}
        row["ratio"] = row["lab2prod_p50_ms"] / row["torch_utils_benchmark_median_ms"]
        row["within_5_percent"] = abs(row["ratio"] - 1) <= 0.05
        results.append(row)
        print(f"{spec:>11} batch {batch_size:>2}: lab2prod {row['lab2prod_p50_ms']:.4g} ms, "
              f"torch.utils.benchmark {row['torch_utils_benchmark_median_ms']:.4g} ms, "
              f"ratio {row['ratio']:.3f} ({'within' if row['within_5_percent'] else 'OUTSIDE'} +-5%)")
    overhead = bm.harness_overhead_ns()
    print(f"harness overhead per timed call: {overhead:.0f} ns")
    out = OUTPUTS_DIR / "benchmarks" / "harness_fidelity.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine, "threads": args.threads, "cases": results,
                               "harness_overhead_ns": overhead}, indent=2))
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
