"""The latency harness, variant checks, SLA choice and efficiency helpers (timings are never asserted)."""

import numpy as np
import pytest
import torch
from torch import nn

from lab2prod.core.errors import Lab2ProdError
from lab2prod.models.load import LoadedModel
from lab2prod.studies import benchmark as bm

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


class FakeClock:
    """A clock that only moves when the timed function runs, by the durations it is given."""

    def __init__(self, durations_ms):
        self.now_ns, self.durations, self.calls = 0, durations_ms, 0

    def clock(self):
        return self.now_ns

    def call(self):
        self.now_ns += int(self.durations(self.calls) * 1e6)
        self.calls += 1


def test_summarize_matches_numpy_percentiles():
    samples = np.arange(1, 101, dtype=float)  # 1..100 ms
    stats = bm.summarize(samples, batch_size=4)
    assert stats["p50_ms"] == pytest.approx(np.percentile(samples, 50))
    assert stats["p99_ms"] == pytest.approx(np.percentile(samples, 99))
    assert stats["max_ms"] == 100 and stats["n"] == 100
    assert stats["throughput_per_s"] == pytest.approx(4 * 1000 / 50.5)
    with pytest.raises(Lab2ProdError, match="no timing samples"):
        bm.summarize([], 1)


def test_warm_up_discards_the_slow_first_calls():
    first_calls = [50.0, 25.0, 12.0, 6.0, 3.0, 1.5]  # kernels picked, caches filled: then 1 ms
    fake = FakeClock(lambda i: first_calls[i] if i < len(first_calls) else 1.0)
    timing = bm.measure(fake.call, min_run_time=0.05, warmup_s=1.0, clock=fake.clock)
    stats = timing.stats()
    # windows of 3 calls: medians 25, 3, 1, 1 -> settled after the fourth window
    assert timing.settled and timing.stable and timing.warmup_calls == 12
    assert stats["p50_ms"] == pytest.approx(1.0) and stats["max_ms"] == pytest.approx(1.0)
    assert stats["n"] >= 50  # at least min_run_time of 1 ms calls


def test_sampling_stops_at_the_time_budget_when_the_median_never_settles():
    fake = FakeClock(lambda i: 1.0 + 0.5 * i)  # every call slower than the last
    timing = bm.measure(fake.call, min_run_time=0.1, max_run_time=0.5, warmup_s=0.01, clock=fake.clock)
    assert not timing.stable and not timing.settled
    assert timing.samples_ms.sum() >= 500 and timing.samples_ms.sum() < 500 + timing.samples_ms.max() + 1


def test_measure_sets_and_restores_threads():
    before = torch.get_num_threads()
    seen = []
    timing = bm.measure(lambda: seen.append(torch.get_num_threads()), threads=1, min_run_time=0.01)
    assert set(seen) == {1} and timing.threads == 1
    assert torch.get_num_threads() == before


def test_variants_are_checked_and_cuda_only_ones_say_why_on_cpu():
    assert bm.check_variants(["auto"], "cpu") == bm.CPU_VARIANTS
    assert "cuda_graphs" in bm.check_variants("auto", "cuda")
    with pytest.raises(Lab2ProdError, match="'tensorrt'.*not known"):
        bm.check_variants(["eager", "tensorrt"])
    model = nn.Linear(4, 2)
    for variant in ("fp16_autocast", "cuda_graphs"):
        with pytest.raises(Lab2ProdError, match="CUDA"):
            bm.build_variant(model, variant, "cpu", torch.randn(2, 4))


def test_check_correct_flags_a_fast_but_wrong_output():
    reference = torch.randn(8, 10)
    assert bm.check_correct(reference, reference.clone())["correct"]
    wrong = bm.check_correct(reference, reference.flip(1))
    assert not wrong["correct"] and wrong["top1_agreement"] < 0.99
    assert not bm.check_correct(reference, torch.randn(8, 5))["correct"]


def _row(variant, batch, p99, throughput, correct=True):
    return bm.BenchmarkRow(variant, "cpu", batch, p99_ms=p99, throughput_per_s=throughput, correct=correct)


def test_choose_sla_takes_the_most_throughput_under_the_p99_constraint():
    rows = [_row("eager", 1, 5, 200), _row("eager", 16, 40, 900), _row("eager", 64, 150, 1500),
            _row("int8", 16, 30, 2000, correct=False)]  # fastest but wrong: never chosen
    chosen = bm.choose_sla(rows, 100)
    assert chosen["met"] and (chosen["variant"], chosen["batch_size"]) == ("eager", 16)
    missed = bm.choose_sla(rows, 1)
    assert not missed["met"] and missed["batch_size"] == 1  # the closest to the SLA is named
    assert bm.choose_sla([], 100)["variant"] is None


def test_flops_per_item_of_a_linear_layer():
    assert bm.flops_per_item(nn.Linear(8, 3), torch.randn(5, 8)) == 2 * 8 * 3


def test_device_peaks_by_name():
    assert bm.device_peak_tflops("NVIDIA H100 80GB HBM3") == bm.GPU_PEAK_TFLOPS["H100"]
    assert bm.device_peak_tflops("NVIDIA H100 PCIe") == bm.GPU_PEAK_TFLOPS["H100 PCIe"]
    assert bm.device_peak_tflops("NVIDIA A10G") == bm.GPU_PEAK_TFLOPS["A10G"]
    assert bm.device_peak_tflops("Some Accelerator") is None and bm.device_peak_tflops(None) is None


def _small_loaded():
    torch.manual_seed(0)
    module = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))

    def make_inputs(batch_size, seed=0, split="test"):
        return torch.randn(batch_size, 3, 16, 16, generator=torch.Generator().manual_seed(seed))

    return LoadedModel("small", module.eval(), "factory", False, (3, 16, 16), make_inputs)


def test_sweep_measures_every_variant_and_batch_and_reports_unbuildable_ones():
    loaded = _small_loaded()
    flops = bm.flops_per_item(loaded.module, loaded.make_inputs(2))
    rows = bm.run_sweep(loaded, ["eager", "torch_export", "dynamic_int8", "cuda_graphs"], "cpu", [1, 3], 1, 0.02,
                        flops_item=flops, progress=False)
    assert [(r.variant, r.batch_size) for r in rows] == [
        (v, b) for v in ("eager", "torch_export", "dynamic_int8", "cuda_graphs") for b in (1, 3)]
    measured = [r for r in rows if r.variant != "cuda_graphs"]
    assert all(r.error is None and r.correct and r.n >= 2 and r.p99_ms >= r.p50_ms for r in measured)
    assert all(r.gflops_per_s > 0 and len(r.samples_ms) == r.n for r in measured)
    assert all("CUDA" in r.error and r.p50_ms is None for r in rows if r.variant == "cuda_graphs")
    assert set(rows[0].as_dict()) >= {"variant", "device", "batch_size", "p50_ms", "p90_ms", "p95_ms", "p99_ms",
                                      "mean_ms", "throughput_per_s", "peak_mem_bytes", "correct"}


def test_a_call_far_over_the_sla_is_timed_briefly_and_marked():
    loaded = _small_loaded()
    rows = bm.run_sweep(loaded, ["eager"], "cpu", [1, 3], 1, 0.05, progress=False, sla_ms=1e-6)
    assert all(r.brief and r.n == 3 and r.correct and r.p99_ms >= r.p50_ms for r in rows)
    (row,) = bm.run_sweep(loaded, ["eager"], "cpu", [3], 1, 0.05, progress=False, sla_ms=1e6)
    assert not row.brief and row.n >= 10 and row.as_dict()["brief"] is False


def test_machine_info_names_the_hardware():
    from lab2prod.studies.environment import machine_snapshot

    info = machine_snapshot()
    assert info["cores"] >= 1 and info["cpu"] and info["torch"] == torch.__version__


@requires_cuda
def test_cuda_sweep_runs_every_cuda_variant():
    loaded = _small_loaded()
    rows = bm.run_sweep(loaded, bm.CUDA_VARIANTS, "cuda", [1, 4], None, 0.05, progress=False)
    # ONNX Runtime's CUDA and TensorRT rows need onnxruntime-gpu (benchmarks/gpu_check.sh installs it);
    # without it they say so, and nothing else may fail
    errors = {r.variant: r.error for r in rows if r.error
              and not (r.variant.startswith("onnxruntime") and "ExecutionProvider here" in r.error)}
    assert not errors, errors
    assert all(r.peak_mem_bytes and r.peak_mem_bytes > 0 for r in rows)
    fp32 = [r for r in rows if r.variant in ("eager", "torchscript", "torch_export", "channels_last", "cuda_graphs")]
    assert all(r.correct for r in fp32)
