"""The written schema of every study's named results (results/<name>.json `values`): each top-level
key with its JSON type and one line of help, and the measures `lab2prod compare` judges (latency,
accuracy, size), so nothing reads meaning from a key's spelling.

`record()` checks what a notebook records against its schema; `compare` asks `measure_kind`; the
report shows the help beside each value; the tests check every study's schema against a real run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

from lab2prod.core.errors import Lab2ProdError

__all__ = ["Measure", "ResultSchema", "SCHEMAS", "check_values", "measure_kind", "field_help"]

_JSON_TYPES = {"string": str, "integer": int, "number": (int, float), "boolean": bool, "object": dict,
               "array": list, "null": type(None)}


@dataclass(frozen=True)
class Measure:
    """A quantity `compare` judges: `pattern` matches flattened result paths (`benchmark.rows[*].p99_ms`;
    `[*]` is one row of a list, keyed by its identifying columns) and `kind` says how:
    latency (a P99 judged with the body of its distribution), accuracy (higher is better, a fraction
    or points), size (bytes, lower is better)."""

    pattern: str
    kind: str

    def matches(self, path: str) -> bool:
        return fnmatchcase(re.sub(r"\[[^\]]*\]", "[*]", path), self.pattern.replace("[*]", "[[]*[]]"))


@dataclass(frozen=True)
class ResultSchema:
    """One study's results: {key: (JSON types separated by |, help)} and the measures in them."""

    name: str
    fields: dict[str, tuple[str, str]]
    measures: tuple[Measure, ...] = field(default_factory=tuple)


_MODEL_CARD = ("object", "the model as loaded: spec, family, parameters, input shape, held-out accuracy")

SCHEMAS: dict[str, ResultSchema] = {schema.name: schema for schema in (
    ResultSchema("environment", {
        "lock": ("string", "the lab lock compared with (a file written by `lab2prod env lock`)"),
        "fingerprint": ("object", "this machine: versions, BLAS, quantized engines, locale, time zone, threads"),
        "diffs": ("array", "differences from the lock: key, lab, here, severity (fail, warn, info)"),
        "smoke": ("array", "operator smoke tests against the lock's outputs: op, device, max_abs_diff, passed"),
        "exported_ops": ("array", "every operator of the exported graph run here: op, ran, error"),
        "utf8_demo": ("array", "non-ASCII labels written and read back under this locale and the C locale"),
        "hour_demo": ("array", "an hour-of-day feature computed under other time zones"),
    }),
    ResultSchema("export", {
        "model": _MODEL_CARD,
        "formats": ("array", "eager vs reloaded file per format, input case, batch size and device"),
        "artifacts": ("array", "per format: produced, error, tracer warnings, dynamic batch"),
        "manifest": ("array", "every exported file: format, file, bytes, sha256, dynamic batch, torch"),
        "env_lock": ("string", "the lab environment lock written beside the exported files"),
    }, (Measure("export.model.heldout_accuracy", "accuracy"), Measure("export.manifest[*].bytes", "size"))),
    ResultSchema("parity", {
        "applies": ("boolean", "false for a model that takes tensors (no image preprocessing to compare)"),
        "kind": ("string", "image (request bytes through the lab transform) or text (JSON through the tokenizer)"),
        "texts": ("integer", "texts sent as requests (a text model)"),
        "bugs_not_applicable": ("object", "text bugs that need what this model lacks, with the reason"),
        "serving_transform": ("string", "the serving path under test"),
        "lab_transform": ("string|null", "the lab transform the serving path is compared with"),
        "recipe": ("object|null", "resize, crop, mean and std of the lab transform"),
        "images": ("integer", "images sent as requests"),
        "labelled": ("boolean", "whether accuracy (labels) or only agreement is measured"),
        "serving_max_abs_diff": ("number|null", "largest per-element difference, serving vs lab tensors"),
        "lab_accuracy": ("number|null", "accuracy of the lab path on the requests (0-1)"),
        "serving": ("array", "the serving path per client encoding (rgb, grayscale, rgba, palette, exif); "
                             "for texts, encodings that differ and the output difference"),
        "bugs": ("array", "each catalogued serving bug: tensor diff (texts: encodings that differ), agreement, "
                          "accuracy and drop, failed requests"),
    }, (Measure("parity.lab_accuracy", "accuracy"),)),
    ResultSchema("quantization", {
        "model": _MODEL_CARD,
        "engine": ("string", "the quantized engine used (x86, fbgemm, onednn, qnnpack)"),
        "threads": ("integer", "torch threads while timing"),
        "labelled": ("boolean", "whether quality is accuracy (labels) or fidelity to fp32"),
        "methods": ("array", "per recipe and batch size: latency, speedup, size, quality, coverage"),
        "sensitivity": ("array", "per layer quantized alone: accuracy drop or disagreement, output error"),
        "frontier": ("array", "layers to int8 one step at a time, least sensitive first: quality lost, cosine, "
                              "latency and speedup at each step"),
        "recommended": ("string|null", "the fastest recipe within the accuracy budget"),
        "export": ("object|null", "the recommended recipe exported and reloaded in a fresh process"),
        "findings": ("array", "what the numbers say, one sentence each"),
        "skipped": ("object", "methods that do not apply to this model, with the reason (ONNX Runtime's when the "
                              "model does not export to ONNX)"),
    }, (Measure("quantization.model.heldout_accuracy", "accuracy"), Measure("quantization.methods[*].accuracy",
                                                                            "accuracy"),
        Measure("quantization.methods[*].size_bytes", "size"))),
    ResultSchema("benchmark", {
        "model": _MODEL_CARD,
        "rows": ("array", "per device, variant and batch size: p50/p90/p99 ms, throughput, n, stable, correct"),
        "sla": ("object", "the highest-throughput correct configuration with p99 within the SLA"),
        "sla_by_device": ("object", "that choice on each device"),
        "machine": ("object", "where it was measured: CPU, cores, torch, threads, GPU and driver"),
        "threads": ("integer", "torch CPU threads while timing"),
        "flops_per_item": ("number|null", "FLOPs of one inference"),
        "efficiency": ("array", "achieved GFLOP/s against a large matmul on the same device"),
    }, (Measure("benchmark.model.heldout_accuracy", "accuracy"), Measure("benchmark.rows[*].p99_ms", "latency"))),
    ResultSchema("serving", {
        "applies": ("boolean", "whether the model was served"),
        "served_file": ("string", "the file TorchServe served"),
        "parity_top1_agreement": ("number|null", "live answers vs the lab path in process, top-1"),
        "max_prob_diff": ("number|null", "largest probability difference, live vs in process (classifiers)"),
        "parity_min_cosine": ("number|null", "smallest cosine, live vs in process (embedders)"),
        "parity_max_abs_diff": ("number|null", "largest embedding difference, live vs in process (embedders)"),
        "requests": ("string", "what clients send: image bytes, JSON texts or JSON arrays"),
        "limits": ("array", "what the server answered without a token, with a wrong one, to an oversized body"),
        "load": ("array", "the Locust load sweep: per user count, p50/p95/p99 ms, errors, throughput"),
        "metrics": ("array", "TorchServe's Prometheus metrics after the load"),
        "tuning": ("array", "per workers x threads x batch configuration at the tuning load"),
        "tuned": ("object|null", "the configuration chosen under the SLA"),
        "default": ("object|null", "what an untuned TorchServe did at the same load"),
        "config_file": ("string", "config.properties written with the chosen configuration"),
        "locustfile": ("string", "the locustfile left in the run folder"),
        "kubernetes": ("string", "the Kubernetes manifests written for the chosen configuration"),
        "backend": ("string", "torchserve, rayserve, both, or a comma-separated list of registered servers"),
        "servers": ("object", "every served server by name: parity, limits, load, metrics, tuning, chosen "
                              "configuration and the deployment files written for it"),
        "rayserve": ("object|null", "Ray Serve's parity, limits, load, metrics, tuning, chosen configuration, Serve "
                                    "config file and RayService manifest"),
        "side_by_side": ("array", "TorchServe and Ray Serve, default and tuned, at the same load: throughput, "
                                  "p50/p95/p99, errors, CPUs, share of the in-process ceiling"),
        "pick": ("string", "which server to pick for this model on this machine, and why"),
    }, (Measure("serving.tuned.p99_ms", "latency"),)),
    ResultSchema("drift", {
        "false_positive_rate": ("number|null", "share of batches flagged under no shift (primary test)"),
        "scenarios": ("array", "per scenario and test: detection rate, accuracy change, median p-value"),
        "batch_size": ("integer", "images per monitored batch"),
        "alpha": ("number", "p-value below which a batch is flagged"),
        "primary_test": ("string", "the test the gate reads"),
    }),
    ResultSchema("security", {
        "inputs": ("array", "every hostile input: rejected, reason code, and on a live server its status"),
        "adversarial": ("object|null", "clean, FGSM and PGD accuracy, and what the z-score screen flagged"),
        "integrity": ("array", "sha256 and weights-only loading checks"),
        "config_audit": ("array", "the TorchServe configuration, item by item, with the fix"),
    }, (Measure("security.adversarial.clean_accuracy", "accuracy"),
        Measure("security.adversarial.fgsm_accuracy", "accuracy"),
        Measure("security.adversarial.pgd_accuracy", "accuracy"))),
    ResultSchema("canary", {
        "v1": ("string", "the serving version"),
        "v2": ("string", "the candidate"),
        "agreement": ("number", "share of held-out inputs with the same top-1"),
        "accuracy_delta_pts": ("number|null", "v2 minus v1 accuracy, in points"),
        "ci_low": ("number|null", "lower end of its paired-bootstrap interval"),
        "ci_high": ("number|null", "upper end of that interval"),
        "mcnemar_p": ("number|null", "McNemar's exact test on the inputs only one version gets right"),
        "p99_delta_ms": ("number|null", "live p99 of v2 minus v1 (offline when there was no rollout)"),
        "offline_p99_delta_ms": ("number|null", "the same in this process, batch 1"),
        "latency_delta": ("object|null", "the live latency change the rollback rule reads, with its interval"),
        "decision": ("string", "promote, hold or roll back"),
        "rules": ("array", "each rule with its outcome and evidence"),
        "latency": ("array", "offline latency of both versions per percentile"),
        "live": ("object|null", "live requests per version: share, errors, percentiles"),
        "applied": ("object|null", "the decision carried out on the server and checked"),
        "served_like_offline": ("object|null", "each served version vs its in-process model"),
    }),
)}


def check_values(name: str, values: dict) -> None:
    """Raise Lab2ProdError naming the key when `values` (plain JSON values, what a notebook records
    under `name`) lacks a key of the schema, has one it does not declare, or one of the wrong JSON
    type. Names without a schema (a study added without one) pass."""
    schema = SCHEMAS.get(name)
    if schema is None:
        return
    missing = sorted(set(schema.fields) - set(values))
    extra = sorted(set(values) - set(schema.fields))
    if missing or extra:
        raise Lab2ProdError(f"results {name!r} do not follow lab2prod.core.schema: missing {missing}, undeclared "
                            f"{extra}; record what the schema declares, or declare the new key")
    for key, (types, _) in schema.fields.items():
        if not any(_is(values[key], kind) for kind in types.split("|")):
            raise Lab2ProdError(f"results {name}.{key} is {type(values[key]).__name__}, the schema says {types}")


def _is(value, kind: str) -> bool:
    if isinstance(value, bool):
        return kind == "boolean"
    return isinstance(value, _JSON_TYPES[kind])


def measure_kind(path: str) -> str | None:
    """latency, accuracy or size for a flattened results path the schema declares as a measure; None
    for everything else (context, not judged)."""
    study = path.split(".", 1)[0]
    schema = SCHEMAS.get(study)
    for measure in schema.measures if schema else ():
        if measure.matches(path):
            return measure.kind
    return None


def field_help(name: str, key: str) -> str:
    """The schema's one line of help for results[name][key], or ''."""
    schema = SCHEMAS.get(name)
    return schema.fields.get(key, ("", ""))[1] if schema else ""
