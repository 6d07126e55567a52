"""Canary release: v1 and v2 on the same inputs, a weighted rollout on TorchServe, and the rollback rule."""

from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from lab2prod.core.errors import Lab2ProdError, one_line
from lab2prod.core.inputs import Inputs, batch_size_of, call, first_tensor, outputs_of, take
from lab2prod.core.results import gate
from lab2prod.core.schema import Results, described
from lab2prod.kinds.codec import answer_vector, codec_for, lab_answer
from lab2prod.models.load import load_model
from lab2prod.models.onnx_rt import OrtModule
from lab2prod.servers import loadtest
from lab2prod.servers.torchserve import server as torchserve
from lab2prod.servers.torchserve.server import http_request, trace_to_file
from lab2prod.studies import serving
from lab2prod.studies.benchmark import measure
from lab2prod.studies.quantization import eval_data, quantize, resolve_module_types
from lab2prod.studies.serving import parity_passes, parity_text

__all__ = [
    "CanaryResults",
    "Policy",
    "check_split",
    "traffic_duration",
    "check_percentile",
    "candidate_model",
    "paired_accuracy",
    "mcnemar_p_value",
    "offline_latency",
    "latency_delta_ci",
    "compare_offline",
    "decide",
    "rollout",
    "CanaryReport",
    "evaluate_canary",
    "canary_gates",
    "plot_canary",
]


@dataclass(kw_only=True)
class CanaryResults(Results):
    """What its notebook records under results/canary.json; the schema is derived from these fields."""

    study: ClassVar[str] = "canary"

    v1: str = described("the serving version")
    v2: str = described("the candidate")
    agreement: float = described("share of held-out inputs with the same top-1 (an embedder: cosine >= 0.99 to v1)")
    accuracy_delta_pts: float | None = described("v2 minus v1 accuracy, in points")
    ci_low: float | None = described("lower end of its paired-bootstrap interval")
    ci_high: float | None = described("upper end of that interval")
    mcnemar_p: float | None = described("McNemar's exact test on the inputs only one version gets right")
    p99_delta_ms: float | None = described("live p99 of v2 minus v1 (offline when there was no rollout)")
    offline_p99_delta_ms: float | None = described("the same in this process, batch 1")
    latency_delta: dict | None = described("the live latency change the rollback rule reads, with its interval")
    decision: str = described("promote, hold or roll back")
    rules: list = described("each rule with its outcome and evidence")
    latency: list = described("offline latency of both versions per percentile")
    live: dict | None = described("live requests per version: share, errors, percentiles")
    applied: dict | None = described("the decision carried out on the server and checked")
    served_like_offline: dict | None = described("each served version vs its in-process model")

DECISIONS = ("promote", "hold", "roll back")


@dataclass(frozen=True)
class Policy:
    """When v2 may replace v1. Accuracy: promote when the lower end of the confidence interval of
    the accuracy change is above -max_accuracy_drop_pts, roll back when its upper end is below
    it, hold in between (not enough evidence yet). Errors: any rise above v1's rate rolls back.
    Latency: an increase of the live `latency_percentile` within max_latency_increase_ms
    promotes; above it, roll back when the lower end of its bootstrap interval is above it too
    (clearly slower), else hold. The rule reads p95 by default: with the few hundred requests a
    20% canary gets, a p99 is set by a handful of requests and moves by tens of ms between runs
    on a shared machine (p99 is reported all the same). Agreement below min_agreement, or fewer
    than min_requests live requests to v2, holds."""

    max_accuracy_drop_pts: float = 1.0
    max_error_rate_increase: float = 0.0
    max_latency_increase_ms: float = 10.0
    latency_percentile: float = 95.0
    min_agreement: float = 0.97
    min_requests: int = 100


SERVED_FORMATS = ("torchscript_trace", "onnx")  # what the canary's TorchServe handler loads


def recommended_candidate(run_dir, method: str = "torch_ao_dynamic", model: str = "") -> tuple[str, str, str]:
    """(candidate, method, why) for candidate "recommended": the file of the recipe this run's quantization study
    recommended for `model` (the label of v1), where its accuracy gate passed and the canary's TorchServe handler
    can serve it (a TorchScript file: torch.ao, whole-model or selective, or fp32 itself; or ONNX Runtime's int8
    file); else "int8" with `method`, and why."""
    path = Path(run_dir) / "results" / "quantization.json" if run_dir else None
    if path is None or not path.exists():
        return "int8", method, f"the quantization study has not run here: v2 is v1 quantized with {method}"
    recorded = json.loads(path.read_text())
    values = recorded["values"]
    chosen, exported = values.get("recommended"), values.get("export") or {}
    measured = (values.get("model") or {}).get("model")
    if model and measured and measured != model:
        return "int8", method, (f"the quantization study measured {measured}, not {model}: v2 is v1 quantized "
                                f"with {method}")
    if chosen and "gates" in recorded and not any(g.get("name") == "quantization:accuracy" and g.get("passed")
                                                  for g in recorded["gates"]):
        return "int8", method, (f"the quantization study's recommendation {chosen} failed its accuracy gate: v2 is "
                                f"v1 quantized with {method}")
    if not chosen:
        return "int8", method, (f"the quantization study found no recipe within its budget: v2 is v1 quantized "
                                f"with {method}, which it did not recommend")
    if exported.get("produced") and not exported.get("error") and exported.get("format") in SERVED_FORMATS:
        return (str(Path(run_dir) / exported["file"]), method,
                f"v2 is the recipe the quantization study recommended ({chosen})")
    return "int8", method, (f"the quantization study recommended {chosen}, which the canary's TorchServe handler "
                            f"does not serve (it loads TorchScript and ONNX): v2 is v1 quantized with {method}")


def candidate_model(loaded, candidate: str, candidate_weights: str = "", method: str = "torch_ao_dynamic",
                    seed: int = 0, run_dir=None) -> tuple[nn.Module, str]:
    """v2: the recipe this run's quantization study recommended when candidate is "recommended"
    (`recommended_candidate`), `loaded` quantized with `method` when it is "int8", else another model spec
    (same input shape and number of outputs as v1). Returns (module, description)."""

    if candidate == "recommended":
        candidate, method, why = recommended_candidate(run_dir, method, loaded.label)
        if candidate != "int8":  # the file the quantization study wrote and reloaded
            if candidate.endswith(".onnx"):
                module = OrtModule(candidate, threads=1)
            else:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated upstream
                    module = torch.jit.load(candidate, map_location="cpu").eval()
            return module, f"{loaded.spec}, {why.removeprefix('v2 is ')}"
        module, label = candidate_model(loaded, "int8", "", method, seed)
        return module, f"{label}: {why.split(': ')[0]}"
    if candidate == "int8":
        module = quantize(loaded.module, method, resolve_module_types(["Linear", "LSTM", "GRU"]))
        return module.eval(), f"{loaded.spec} int8 ({method})"
    other = load_model(candidate, candidate_weights or None, None, seed)
    probe = loaded.make_inputs(2, seed, "test")
    try:
        with torch.inference_mode():
            shapes = (tuple(first_tensor(call(loaded.module, probe)).shape),
                      tuple(first_tensor(call(other.module, probe)).shape))
    except Exception as exc:
        raise Lab2ProdError(f"candidate {candidate!r} fails on v1's inputs ({one_line(exc)}); a canary needs a "
                            "drop-in replacement") from None
    if shapes[0] != shapes[1]:
        raise Lab2ProdError(f"candidate {candidate!r} answers {shapes[1]}, but v1 answers {shapes[0]}; a canary "
                            "needs a drop-in replacement")
    return other.module, other.label


def check_split(weights) -> list[float]:
    """The traffic split [v1, v2] as weights: two non-negative numbers, not both zero."""
    values = list(weights) if isinstance(weights, (list, tuple)) else [weights]
    if len(values) != 2 or not all(isinstance(w, (int, float)) and w >= 0 for w in values) or sum(values) <= 0:
        raise Lab2ProdError(f"traffic_split {values!r} must be two non-negative weights for v1 and v2, "
                            "e.g. -p traffic_split=[80,20]")
    return values


def check_percentile(percentile: float) -> float:
    """The latency percentile the rule reads: strictly between 0 and 100."""
    if not 0 < percentile < 100:
        raise Lab2ProdError(f"latency_percentile {percentile!r} must be between 0 and 100; "
                            "e.g. -p latency_percentile=95")
    return percentile


def mcnemar_p_value(v1_only: int, v2_only: int) -> float:
    """Exact two-sided McNemar test: the probability, if both models were equally accurate, of
    a split of the discordant pairs at least this uneven (binomial with p = 1/2)."""
    n = v1_only + v2_only
    if n == 0:
        return 1.0
    k = min(v1_only, v2_only)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def paired_accuracy(v1_correct, v2_correct, confidence: float = 0.95, resamples: int = 5000,
                    seed: int = 0) -> dict:
    """Accuracy of v1 and v2 on the same labelled inputs, the change in points with a paired
    bootstrap confidence interval (the same resampled inputs for both), and McNemar's exact
    p-value on the inputs where they disagree."""
    a = np.asarray(v1_correct, dtype=bool)
    b = np.asarray(v2_correct, dtype=bool)
    if a.shape != b.shape or a.size == 0:
        raise Lab2ProdError(f"paired accuracy needs the same non-empty inputs for both versions, got {a.size} "
                            f"and {b.size}")
    if not 0 < confidence < 1:
        raise Lab2ProdError(f"confidence {confidence!r} must be between 0 and 1, e.g. 0.95")
    diff = b.astype(np.int8) - a.astype(np.int8)
    rng = np.random.default_rng(seed)
    index = rng.integers(0, diff.size, size=(resamples, diff.size))
    deltas = diff[index].mean(axis=1) * 100
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(deltas, [tail, 100 - tail])
    v1_only, v2_only = int((a & ~b).sum()), int((b & ~a).sum())
    return {"inputs": int(a.size), "v1_accuracy": float(a.mean()), "v2_accuracy": float(b.mean()),
            "accuracy_delta_pts": float(diff.mean() * 100), "ci_low": float(low), "ci_high": float(high),
            "confidence": confidence, "v1_only_correct": v1_only, "v2_only_correct": v2_only,
            "mcnemar_p": mcnemar_p_value(v1_only, v2_only)}


def offline_latency(v1: nn.Module, v2: nn.Module, batch: Inputs, threads: int = 1,
                    min_run_time: float = 1.0, rounds: int = 3) -> list[dict]:
    """Latency of v1 and v2 on the same batch, measured in alternating rounds (so drift of the
    machine hits both), pooled: one row per percentile with v1, v2 and the delta in ms."""

    samples = {"v1": [], "v2": []}
    with torch.inference_mode():
        for _ in range(rounds):
            for name, module in (("v1", v1), ("v2", v2)):
                timing = measure(lambda m=module: call(m, batch), batch_size=batch_size_of(batch), threads=threads,
                                 min_run_time=min_run_time / rounds)
                samples[name].extend(timing.samples_ms.tolist())
    rows = []
    for label, q in (("p50", 50), ("p90", 90), ("p95", 95), ("p99", 99)):
        one, two = float(np.percentile(samples["v1"], q)), float(np.percentile(samples["v2"], q))
        rows.append({"percentile": label, "v1_ms": one, "v2_ms": two, "delta_ms": two - one,
                     "delta_pct": 100 * (two - one) / max(one, 1e-12)})
    return rows


def latency_delta_ci(v1_ms, v2_ms, percentile: float = 95.0, confidence: float = 0.95, resamples: int = 2000,
                     seed: int = 0) -> dict:
    """The change of a latency percentile from v1 to v2 (ms) with a bootstrap confidence
    interval, each version's requests resampled on their own: how sure a difference measured on
    a few hundred requests is. Returns {percentile, v1_ms, v2_ms, delta_ms, ci_low, ci_high}."""
    a, b = np.asarray(v1_ms, dtype=float), np.asarray(v2_ms, dtype=float)
    if a.size == 0 or b.size == 0:
        raise Lab2ProdError("a latency comparison needs requests answered by both versions")
    check_percentile(percentile)
    rng = np.random.default_rng(seed)
    deltas = (np.percentile(b[rng.integers(0, b.size, (resamples, b.size))], percentile, axis=1)
              - np.percentile(a[rng.integers(0, a.size, (resamples, a.size))], percentile, axis=1))
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(deltas, [tail, 100 - tail])
    one, two = float(np.percentile(a, percentile)), float(np.percentile(b, percentile))
    return {"percentile": percentile, "v1_ms": one, "v2_ms": two, "delta_ms": two - one,
            "ci_low": float(low), "ci_high": float(high)}


def _probabilities(module: nn.Module, inputs: Inputs, batch_size: int = 256) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat([torch.softmax(first_tensor(call(module, take(inputs, i, i + batch_size))).float(), dim=1)
                          for i in range(0, batch_size_of(inputs), batch_size)])


EMBEDDING_AGREEMENT = 0.99  # cosine at which two embeddings of one input count as the same answer


def compare_offline(loaded, v2: nn.Module, count: int = 360, seed: int = 0) -> dict:
    """v1 and v2 on the same held-out inputs: top-1 agreement, the largest probability change,
    and the paired accuracy comparison when the inputs have labels (else accuracy is None). For
    an embedder: the share of inputs whose embeddings have cosine >= 0.99, and the mean cosine."""

    data = eval_data(loaded, count, seed)
    if loaded.task == "embedder":
        # Vectors have no top-1: an input "agrees" when v2's embedding points where v1's does.
        e1, e2 = outputs_of(loaded.module, data.inputs), outputs_of(v2, data.inputs)
        cosine = torch.nn.functional.cosine_similarity(e1.flatten(1), e2.flatten(1), dim=1)
        return {"inputs": data.count, "agreement": float((cosine >= EMBEDDING_AGREEMENT).float().mean()),
                "disagreements": int((cosine < EMBEDDING_AGREEMENT).sum()), "mean_cosine": float(cosine.mean()),
                "max_prob_change": float((e1 - e2).abs().max()), "accuracy": None}
    p1, p2 = _probabilities(loaded.module, data.inputs), _probabilities(v2, data.inputs)
    top1, top2 = p1.argmax(1), p2.argmax(1)
    result = {"inputs": data.count, "agreement": float((top1 == top2).float().mean()),
              "disagreements": int((top1 != top2).sum()), "max_prob_change": float((p1 - p2).abs().max()),
              "accuracy": None}
    if data.labels is not None:
        result["accuracy"] = paired_accuracy((top1 == data.labels).numpy(), (top2 == data.labels).numpy(),
                                             seed=seed)
    return result


def decide(offline: dict, live: dict | None, policy: Policy) -> tuple[str, list[dict]]:
    """The rollback rule: promote, hold or roll back, with one row of evidence per rule
    ({rule, value, threshold, outcome, detail}). Roll back wins over hold, hold over promote."""
    rules = []

    def rule(name, value, threshold, outcome, detail):
        rules.append({"rule": name, "value": value, "threshold": threshold, "outcome": outcome, "detail": detail})

    accuracy = offline.get("accuracy")
    if accuracy:
        budget = -policy.max_accuracy_drop_pts
        low, high = accuracy["ci_low"], accuracy["ci_high"]
        outcome = "promote" if low >= budget else ("roll back" if high < budget else "hold")
        rule("accuracy", accuracy["accuracy_delta_pts"], budget, outcome,
             f"change {accuracy['accuracy_delta_pts']:+.2f} pts, {accuracy['confidence']:.0%} CI "
             f"[{low:+.2f}, {high:+.2f}] against a budget of {budget:+.2f}; McNemar p {accuracy['mcnemar_p']:.3g}")
    else:
        rule("accuracy", None, -policy.max_accuracy_drop_pts, "not evaluated",
             "no labelled inputs: agreement stands in for accuracy")
    changed = (f"fall below cosine {EMBEDDING_AGREEMENT:g} to v1's embedding (mean cosine "
               f"{offline['mean_cosine']:.4f})" if "mean_cosine" in offline else "change their top-1")
    rule("agreement", offline["agreement"], policy.min_agreement,
         "promote" if offline["agreement"] >= policy.min_agreement else "hold",
         f"{offline['disagreements']} of {offline['inputs']} held-out inputs {changed}")
    if live is None:
        rule("live traffic", None, policy.min_requests, "not evaluated", "no rollout (nothing to serve)")
        return _verdict(rules), rules
    v1, v2 = live["v1"], live["v2"]
    rule("live requests to v2", v2["requests"], policy.min_requests,
         "promote" if v2["requests"] >= policy.min_requests else "hold",
         f"{v2['requests']} of {v1['requests'] + v2['requests']} requests went to v2")
    rise = v2["error_rate"] - v1["error_rate"]
    rule("error rate", rise, policy.max_error_rate_increase,
         "promote" if rise <= policy.max_error_rate_increase else "roll back",
         f"v2 {v2['error_rate']:.2%} vs v1 {v1['error_rate']:.2%}")
    name, limit = f"p{policy.latency_percentile:g} latency", policy.max_latency_increase_ms
    change = live.get("latency_delta")
    if change is None:
        rule(name, None, limit, "roll back", "a version answered no request")
    else:
        delta, low, high = change["delta_ms"], change["ci_low"], change["ci_high"]
        rule(name, delta, limit, "promote" if delta <= limit else ("roll back" if low > limit else "hold"),
             f"v2 {change['v2_ms']:.1f} ms vs v1 {change['v1_ms']:.1f} ms under the same load, "
             f"change 95% CI [{low:+.1f}, {high:+.1f}] ms against {limit:+.1f}")
    return _verdict(rules), rules


def _verdict(rules: list[dict]) -> str:
    outcomes = {r["outcome"] for r in rules}
    return "roll back" if "roll back" in outcomes else ("hold" if "hold" in outcomes else "promote")


def _trace(module: nn.Module, example: Inputs, path: Path) -> Path:
    try:
        return trace_to_file(module, example, path)
    except Lab2ProdError as exc:
        raise Lab2ProdError(f"v2: {exc}; torchao models export with torch.export only, so use candidate_method "
                            "torch_ao_dynamic for the rollout") from None


def _log_distance(p: torch.Tensor, q: torch.Tensor, task: str = "classifier") -> float:
    # On log-probabilities: a confident classifier's versions differ mostly in the tiny ones.
    # Embeddings are compared as they are.
    p, q = p.detach(), q.detach()
    if task == "embedder":
        return float((p - q).abs().max())
    return float((p.clamp_min(1e-30).log() - q.clamp_min(1e-30).log()).abs().max())


def _closest(served: torch.Tensor, candidates: dict[str, torch.Tensor], task: str) -> tuple[str, float]:
    distances = {name: _log_distance(served, p, task) for name, p in candidates.items()}
    name = min(distances, key=distances.get)
    return name, distances[name]


def traffic_duration(duration_s: float, per_request_s: float, weights, min_requests: int,
                     max_duration_s: float = 60.0) -> float:
    """Seconds of split traffic: `duration_s`, or longer where v2 would get fewer than `min_requests` in it (a
    large model answers few requests a second, and the policy holds a canary it saw too little of), up to
    `max_duration_s` (or `duration_s` when that is longer). The rate is the server's, one request at a time,
    as measured by the parity requests (`per_request_s`), with a quarter to spare."""
    share = weights[1] / sum(weights)
    if share <= 0 or per_request_s <= 0:
        return duration_s
    needed = 1.25 * min_requests * per_request_s / share
    return round(max(duration_s, min(needed, max(max_duration_s, duration_s))), 1)


def rollout(loaded, v2: nn.Module, run_dir: Path, weights: tuple[int, int] = (80, 20), users: int = 2,
            duration_s: float = 10.0, policy: Policy | None = None, offline: dict | None = None,
            check_requests: int = 32, seed: int = 0, config=None) -> dict:
    """Serve v1 (version 1.0, the default) and v2 (2.0) as one model on a real TorchServe, check
    each answers like its in-process model, split Locust traffic between them by `weights`, decide
    with `policy`, then apply the decision through the management API (promote: 2.0 becomes the
    default, 1.0 drains and is unregistered, as the resilience study's update; roll back: 2.0 is unregistered;
    hold: nothing changes) and verify which version now
    answers the unversioned route. The traffic runs `duration_s`, or longer where v2 would not get the
    policy's minimum of requests in it (`traffic_duration`). The server is stopped before this returns."""

    weights = check_split(weights)
    policy = policy or Policy()
    config = config or torchserve.ServeConfig(workers=1, threads=1)
    torchserve.check_requirements()
    run_dir = Path(run_dir)
    serve_dir = run_dir / "canary"
    models_dir = serve_dir / "models"
    models_dir.mkdir(parents=True, exist_ok=True)
    example = loaded.make_inputs(2, seed, "train")
    files = {"1.0": torchserve.exported_torchscript(run_dir) or _trace(loaded.module, example, models_dir / "v1.pt"),
             "2.0": Path(v2.path) if isinstance(v2, OrtModule) else _trace(v2, example, models_dir / "v2.pt")}
    requests = serving.request_images(loaded, check_requests, seed)
    lab = codec_for(loaded, guarded=False)
    probe = requests[0][1]
    with torch.inference_mode():
        expected = {name: lab_answer(module, lab, probe, loaded.task)
                    for name, module in (("1.0", loaded.module), ("2.0", v2))}
    server = torchserve.TorchServe(serve_dir, config)
    name = "model"
    result = {"weights": list(weights), "users": users, "duration_s": duration_s}
    try:
        server.start()
        for version, file in files.items():
            archive = torchserve.build_archive(loaded, serve_dir, name, config.threads, seed, file, version,
                                            f"{name}-v{version.split('.')[0]}")
            server.register(archive, config, name=name)
        start = time.perf_counter()
        result["served_like_offline"] = {
            version: serving.live_parity(server, f"{name}/{version}", loaded, requests, module)
            for version, module in (("1.0", loaded.module), ("2.0", v2))}
        per_request_s = (time.perf_counter() - start) / (2 * len(requests))
        result["duration_s"] = traffic_duration(duration_s, per_request_s, weights, policy.min_requests)
        locustfile = loadtest.write_locustfile(serve_dir, requests, lab.suffix)
        routes = [{"path": f"/predictions/{name}/1.0", "weight": weights[0], "label": "v1"},
                  {"path": f"/predictions/{name}/2.0", "weight": weights[1], "label": "v2"}]
        load = loadtest.run_locust(server, name, locustfile, users, result["duration_s"], routes=routes)
        live = load.pop("by_route")
        samples = {label: live[label].pop("latencies_ms") for label in live}
        if samples["v1"] and samples["v2"]:
            live["latency_delta"] = latency_delta_ci(samples["v1"], samples["v2"], policy.latency_percentile,
                                                     seed=seed)
        result.update(live=live, load=load, latencies_ms=samples)
        decision, rules = decide(offline or compare_offline(loaded, v2, seed=seed), live, policy)
        result.update(decision=decision, rules=rules)
        result["applied"] = _apply(server, name, decision, probe, expected, lab.content_type, loaded.task)
    finally:
        server.stop()
    return result


def _apply(server, name: str, decision: str, probe: bytes, expected: dict[str, torch.Tensor],
           content_type: str | None = None, task: str = "classifier") -> dict:
    """Carry the decision out on the live server and check which version answers /predictions/<name>."""

    key = server.keys.get("management")
    if decision == "promote":  # the update the resilience study measures under load: set-default, drain, unregister
        try:
            server.switch(name, "2.0", "1.0")
            status, body = 200, b""
        except Lab2ProdError as exc:
            status, body = 0, str(exc).encode()
        action = "made 2.0 the default, let 1.0 drain for 2 s and unregistered it"
        wanted = "2.0"
    elif decision == "roll back":
        status, body = http_request("DELETE", f"{server.management_url}/models/{name}/2.0", key, timeout=60)
        action = "unregistered 2.0"
        wanted = "1.0"
    else:
        status, body, action, wanted = 200, b"", "kept both versions at the same weights", "1.0"

    answer_status, answer = server.predict(name, probe, content_type=content_type)
    answered, distance = (_closest(answer_vector(json.loads(answer)), expected, task) if answer_status == 200
                          else (None, None))
    distinct = _log_distance(expected["1.0"], expected["2.0"], task) > 1e-3
    return {"action": action, "status": status, "message": body[:200].decode(errors="replace"),
            "default_answered_by": answered if distinct else "v1 and v2 answer alike",
            "expected": wanted, "max_log_prob_diff": distance,
            "verified": status == 200 and answer_status == 200 and (not distinct or answered == wanted)}


@dataclass
class CanaryReport:
    """What the canary notebook shows and records."""

    v1: str
    v2: str
    offline: dict
    latency: list[dict]
    rollout: dict | None = None
    reason: str = ""  # why there is no rollout
    decision: str = ""
    rules: list[dict] = field(default_factory=list)

    def results(self) -> CanaryResults:
        """The named results under results["canary"]."""
        accuracy = self.offline.get("accuracy") or {}
        p99 = next(r for r in self.latency if r["percentile"] == "p99")
        live = (self.rollout or {}).get("live")
        return CanaryResults(
            v1=self.v1, v2=self.v2, agreement=self.offline["agreement"],
            accuracy_delta_pts=accuracy.get("accuracy_delta_pts"), ci_low=accuracy.get("ci_low"),
            ci_high=accuracy.get("ci_high"), mcnemar_p=accuracy.get("mcnemar_p"),
            p99_delta_ms=(live["v2"]["p99_ms"] - live["v1"]["p99_ms"]) if live else p99["delta_ms"],
            offline_p99_delta_ms=p99["delta_ms"], latency_delta=(live or {}).get("latency_delta"),
            decision=self.decision, rules=self.rules, latency=self.latency, live=live,
            applied=(self.rollout or {}).get("applied"),
            served_like_offline=(self.rollout or {}).get("served_like_offline"))


def evaluate_canary(loaded, v2: nn.Module, v2_label: str, run_dir: Path, weights=(80, 20), users: int = 2,
                    duration_s: float = 10.0, policy: Policy | None = None, threads: int = 1,
                    min_run_time: float = 1.0, seed: int = 0) -> CanaryReport:
    """Offline comparison (agreement, paired accuracy, latency per percentile), then the weighted
    rollout on TorchServe (every kind of model: image bytes or JSON requests), and the decision."""
    policy = policy or Policy()
    offline = compare_offline(loaded, v2, seed=seed)
    latency = offline_latency(loaded.module, v2, loaded.make_inputs(1, seed, "test"), threads, min_run_time)
    report = CanaryReport(loaded.label, v2_label, offline, latency)
    report.rollout = rollout(loaded, v2, run_dir, tuple(weights), users, duration_s, policy, offline, seed=seed)
    report.decision, report.rules = report.rollout["decision"], report.rollout["rules"]
    return report


def canary_gates(report: CanaryReport) -> list[dict]:
    """canary:decision (passes on promote), canary:served (both versions answer like their
    in-process models), canary:rollback (the decision was applied and verified on the server)."""

    decisive = {r["rule"]: r for r in report.rules if r["outcome"] != "promote"}
    gates = [gate("canary:decision", report.decision == "promote", report.decision, "promote",
                  "; ".join(f"{name}: {r['detail']}" for name, r in decisive.items()) or
                  f"{report.v2} may replace {report.v1}: every rule passed")]
    names = ("canary:served", "canary:rollback")
    if report.rollout is None:
        return gates + [gate(n, False, None, None, report.reason, skipped=True) for n in names]

    served = report.rollout["served_like_offline"]
    worst = max(s.get("max_abs_diff", s.get("max_prob_diff", math.inf)) for s in served.values())
    served_ok = all(parity_passes(s) for s in served.values())
    applied = report.rollout["applied"]
    return gates + [
        gate(names[0], served_ok, worst, 1e-4,
             "; ".join(f"v{v[0]}: {parity_text(s)}" for v, s in served.items())),
        gate(names[1], applied["verified"], applied["default_answered_by"], applied["expected"],
             f"{applied['action']} (HTTP {applied['status']}); the unversioned route answered as "
             f"{applied['default_answered_by']}"),
    ]


# ---------------------------------------------------------------- tables and plots of the notebook


def plot_canary(report, policy):
    """Left: the accuracy change of v2 with its confidence interval against the budget. Right:
    the latency each version's live requests saw (cumulative share), with the percentile the
    rollback rule reads marked."""
    import matplotlib.pyplot as plt
    import numpy as np

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.6), gridspec_kw={"width_ratios": [1, 2]})
    accuracy = report.offline.get("accuracy")
    if accuracy:
        delta, low, high = accuracy["accuracy_delta_pts"], accuracy["ci_low"], accuracy["ci_high"]
        left.errorbar([0], [delta], yerr=[[delta - low], [high - delta]], fmt="o", capsize=8, color="C0",
                      label=f"{accuracy['confidence']:.0%} CI (paired bootstrap)")
        left.axhline(-policy.max_accuracy_drop_pts, color="#b00020", linewidth=1.2, label="budget")
        left.axhline(0, color="#888", linewidth=0.8)
        span = max(abs(low), abs(high), policy.max_accuracy_drop_pts) * 1.4 + 0.1
        left.set_ylim(-span, span)
        left.legend(fontsize=8, loc="upper right")
    else:
        left.text(0.5, 0.5, "no labels:\nagreement only", ha="center", va="center", transform=left.transAxes)
    left.set_xticks([])
    left.set_ylabel("accuracy change v2 - v1 (points)")
    measure = f"cosine >= {EMBEDDING_AGREEMENT:g}" if "mean_cosine" in report.offline else "top-1 agreement"
    left.set_title(f"Accuracy: {report.offline['agreement']:.1%} {measure}")
    samples = (report.rollout or {}).get("latencies_ms") or {}
    for color, (label, values) in zip(("C0", "C1"), samples.items(), strict=False):
        if not values:
            continue
        ordered = np.sort(np.asarray(values))
        right.plot(ordered, np.arange(1, ordered.size + 1) / ordered.size, color=color,
                   label=f"{label}: {ordered.size} requests")
        q = policy.latency_percentile
        mark = float(np.percentile(ordered, q))
        right.axvline(mark, color=color, linestyle="--", linewidth=1, label=f"{label} p{q:g} {mark:.1f} ms")
    if samples:
        right.set_xscale("log")
        right.set_xlabel("latency seen by the client (ms)")
        right.set_ylabel("share of requests")
        right.legend(fontsize=8, loc="lower right")
        right.set_title(f"Live latency per version (p{policy.latency_percentile:g} increase allowed: "
                        f"{policy.max_latency_increase_ms:g} ms)")
    else:
        right.text(0.5, 0.5, report.reason or "no rollout", ha="center", va="center", wrap=True,
                   transform=right.transAxes)
        right.set_axis_off()
    fig.tight_layout()
    return fig
