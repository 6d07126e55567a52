#!/usr/bin/env bash
# The GPU check: everything lab2prod does on CUDA, in one run, with a table for the README.
#
#   benchmarks/gpu_check.sh OUT_DIR            on a GPU machine (about 10 minutes)
#   benchmarks/gpu_check.sh --dry-run OUT_DIR  the same steps on the CPU with tiny settings (CI)
#
# 1. installs requirements.txt into .venv-gpu (and ONNX Runtime's GPU build, for its CUDA and
#    TensorRT execution providers); a dry run uses the checkout's .venv;
# 2. runs the CUDA tests (tests that need a GPU skip elsewhere);
# 3. runs the benchmark notebook on cuda for resnet18 and digits_cnn (every CUDA variant: eager,
#    TorchScript, torch.export, fp16/bf16 autocast, channels_last, torch.compile, CUDA graphs,
#    ONNX Runtime CUDA and TensorRT with I/O binding);
# 4. writes OUT_DIR/gpu_table.md: the card, its driver, each variant's P50/P99/throughput and the
#    achieved TFLOP/s against the card's peak; OUT_DIR/environment.txt: nvidia-smi and the versions.
set -euo pipefail
cd "$(dirname "$0")/.."

dry=0
if [ "${1:-}" = "--dry-run" ]; then dry=1; shift; fi
out="${1:?usage: benchmarks/gpu_check.sh [--dry-run] OUT_DIR}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
start=$(date +%s)

if [ "$dry" = 1 ]; then
    py=.venv/bin/python
    device=cpu
    settings=(-p 'batch_sizes=[1]' -p min_run_time=0.05 -p "variants=['eager','onnxruntime']")
    tests=(tests/test_benchmark.py -k "cuda or variants")
    models=(digits_mlp digits_cnn)  # the script's path, on models that export in seconds
else
    if [ ! -x .venv-gpu/bin/python ]; then
        python3.11 -m venv .venv-gpu
        .venv-gpu/bin/pip install --quiet --disable-pip-version-check -r requirements.txt
        .venv-gpu/bin/pip uninstall --quiet -y onnxruntime
        .venv-gpu/bin/pip install --quiet --disable-pip-version-check onnxruntime-gpu \
            || echo "onnxruntime-gpu did not install: the ONNX Runtime CUDA rows will say so"
    fi
    py=.venv-gpu/bin/python
    device=cuda
    settings=(-p 'batch_sizes=[1,8,64]' -p min_run_time=1.0)
    tests=(tests/test_benchmark.py tests/test_export.py tests/test_environment.py -k "cuda or gpu")
    models=(resnet18 digits_cnn)
    if ! "$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        echo "gpu_check: no CUDA device here; use --dry-run on a CPU" >&2
        exit 2
    fi
fi

{
    nvidia-smi 2>/dev/null || echo "nvidia-smi: not available (no GPU)"
    "$py" -c "import torch, onnxruntime as o; print('torch', torch.__version__, 'cuda', torch.version.cuda); \
print('onnxruntime', o.__version__, o.get_available_providers())"
} > "$out/environment.txt" 2>&1

export HF_HUB_OFFLINE=1
"$py" -m pytest -q -n 0 -p no:cacheprovider "${tests[@]}" 2>&1 | tee "$out/cuda_tests.txt" | tail -3

runs=()
for model in "${models[@]}"; do
    "$py" -m lab2prod.run.cli run --only benchmark --model "$model" --device "$device" "${settings[@]}" \
        --no-progress --out "$out/runs" --run-id "$model" > "$out/run_$model.txt" 2>&1 \
        || echo "gpu_check: the benchmark of $model did not pass its gate (see $out/run_$model.txt)"
    runs+=("$out/runs/$model")
done

"$py" benchmarks/gpu_table.py "$out/gpu_table.md" "${runs[@]}"
echo "gpu_check: done in $(( $(date +%s) - start )) s; table in $out/gpu_table.md"
