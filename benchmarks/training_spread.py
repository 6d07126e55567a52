"""How much a reference model's training depends on the CPU's float kernels: train it from scratch under
several kernel settings, each in a fresh process, and print its held-out accuracy, a checksum of its weights and
the seconds it took.

    python benchmarks/training_spread.py [MODEL ...]     (default: photo_cnn digits_cnn)

Settings, from what this CPU offers down to kernels every x86-64 CPU runs alike:
- native: ATen, oneDNN and MKL each dispatch to the widest instruction set of this CPU (AVX2 on an AMD
  EPYC of this kind, AVX-512 and VNNI on a recent Intel Xeon);
- aten_default: ATen's vectorized kernels compiled for no AVX (ATEN_CPU_CAPABILITY=default);
- portable: that, oneDNN capped at SSE4.1 (ONEDNN_MAX_CPU_ISA) and MKL in conditional numerical
  reproducibility (MKL_CBWR=COMPATIBLE).

On one machine the rows show how far the kernel paths alone move the accuracy. Run on two CPUs, equal
`portable` checksums say that setting trains the same weights on both, and the `native` rows give the
spread between the CPUs that the tests' accuracy thresholds must stay clear of.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

SETTINGS = {
    "native": {},
    "aten_default": {"ATEN_CPU_CAPABILITY": "default"},
    "portable": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_CBWR": "COMPATIBLE"},
}

_CHILD = """
import hashlib, json, sys, time
import torch
from lab2prod.models.reference import train_reference_model, trained_on
began = time.perf_counter()
module, metrics = train_reference_model(sys.argv[1])
seconds = time.perf_counter() - began
digest = hashlib.sha256()
for name, tensor in sorted(module.state_dict().items()):
    digest.update(name.encode()); digest.update(tensor.detach().contiguous().numpy().tobytes())
print(json.dumps({**metrics, "sha256": digest.hexdigest()[:12], "seconds": round(seconds, 1), **trained_on()}))
"""


def train(model: str, setting: str) -> dict:
    env = {**os.environ, **SETTINGS[setting]}
    proc = subprocess.run([sys.executable, "-c", _CHILD, model], capture_output=True, text=True, env=env,
                          timeout=1800)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(models: list[str]) -> None:
    print("| model | setting | ISA torch reports | held-out accuracy | weights sha256 | seconds |")
    print("|---|---|---|---|---|---|")
    cpu = ""
    for model in models:
        for setting in SETTINGS:
            row = train(model, setting)
            cpu = row.get("cpu", cpu)
            if "error" in row:
                print(f"| {model} | {setting} | | error: {row['error']} | | |", flush=True)
                continue
            print(f"| {model} | {setting} | {row['isa']} | {row['heldout_accuracy']:.4f} | {row['sha256']} | "
                  f"{row['seconds']} |", flush=True)
    print(f"\nCPU: {cpu}, one torch thread per training (lab2prod.models.reference.TRAINING).")


if __name__ == "__main__":
    main(sys.argv[1:] or ["photo_cnn", "digits_cnn"])
