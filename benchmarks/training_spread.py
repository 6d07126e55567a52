"""How much a reference model's training depends on the CPU's float kernels: train it from scratch under
several kernel settings, each in a fresh process, and print its held-out accuracy, a checksum of its weights and
the seconds it took.

    python benchmarks/training_spread.py [MODEL ...] [--settings NAME,NAME]   (default: photo_cnn digits_cnn)

Settings, from what this CPU offers down to kernels every x86-64 CPU runs alike:
- native: ATen, oneDNN and MKL each dispatch to the widest instruction set of this CPU (AVX-512 on an
  AMD EPYC of family 25 model 17 and on a recent Intel Xeon, AVX2 on older EPYCs);
- as_avx2: the three capped at AVX2, the kernels an AVX2-only CPU runs (on a CPU with AVX-512);
- aten_default: ATen's vectorized kernels compiled for no AVX (ATEN_CPU_CAPABILITY=default);
- portable: that, oneDNN capped at SSE4.1 (ONEDNN_MAX_CPU_ISA) and MKL in conditional numerical
  reproducibility (MKL_CBWR=COMPATIBLE); portable_as_avx2 is the same with MKL told the CPU has AVX2 only.

On one machine the rows show how far the kernel paths alone move the accuracy. Run on two CPUs, equal
`portable` checksums say that setting trains the same weights on both, and the `native` rows give the
spread between the CPUs that the tests' accuracy thresholds must stay clear of.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

PORTABLE = {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_CBWR": "COMPATIBLE"}
# the instruction set an AVX2-only CPU offers, for ATen, oneDNN and MKL alike
AS_AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
SETTINGS = {
    "native": {},
    "as_avx2": AS_AVX2,
    "aten_default": {"ATEN_CPU_CAPABILITY": "default"},
    "portable": PORTABLE,
    "portable_as_avx2": {**PORTABLE, "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
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


def main(models: list[str], settings: list[str]) -> None:
    print("| model | setting | ISA torch reports | held-out accuracy | weights sha256 | seconds |")
    print("|---|---|---|---|---|---|")
    cpu = ""
    for model in models:
        for setting in settings:
            row = train(model, setting)
            cpu = row.get("cpu", cpu)
            if "error" in row:
                print(f"| {model} | {setting} | | error: {row['error']} | | |", flush=True)
                continue
            print(f"| {model} | {setting} | {row['isa']} | {row['heldout_accuracy']:.4f} | {row['sha256']} | "
                  f"{row['seconds']} |", flush=True)
    print(f"\nCPU: {cpu}, one torch thread per training (lab2prod.models.reference.TRAINING).")


if __name__ == "__main__":
    args = sys.argv[1:]
    chosen = list(SETTINGS)
    if "--settings" in args:
        at = args.index("--settings")
        chosen, args = args[at + 1].split(","), args[:at] + args[at + 2:]
        unknown = [name for name in chosen if name not in SETTINGS]
        if unknown:
            sys.exit(f"unknown setting {unknown[0]!r}; use some of {', '.join(SETTINGS)}")
    main(args or ["photo_cnn", "digits_cnn"], chosen)
