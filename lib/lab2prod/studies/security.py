"""Security checks: hostile inputs, adversarial examples, model integrity, and a TorchServe config audit."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from lab2prod.core.errors import Lab2ProdError
from lab2prod.core.files import data_payload_limit, sha256_file
from lab2prod.core.results import gate
from lab2prod.core.schema import Measure, Results, described
from lab2prod.kinds.codec import codec_for
from lab2prod.kinds.guard import InputGuard, Rejected
from lab2prod.models.load import load_state_dict_file
from lab2prod.servers.base import Server, ServerConfig
from lab2prod.servers.frontdoor import audit_config
from lab2prod.servers.registry import SERVERS
from lab2prod.studies.serving import request_images

__all__ = [
    "SecurityResults",
    "try_inputs",
    "fgsm",
    "pgd",
    "adversarial_report",
    "verify_file",
    "integrity_checks",
    "audit_servers",
    "try_live",
    "security_gates",
    "plot_adversarial",
]


@dataclass(kw_only=True)
class SecurityResults(Results):
    """What its notebook records under results/security.json; the schema is derived from these fields."""

    study: ClassVar[str] = "security"
    measures: ClassVar[tuple[Measure, ...]] = (
        Measure("security.adversarial.clean_accuracy", "accuracy"),
        Measure("security.adversarial.fgsm_accuracy", "accuracy"),
        Measure("security.adversarial.pgd_accuracy", "accuracy"),
    )

    inputs: list = described("every hostile input: rejected, reason code, and on a live server its status")
    adversarial: dict | None = described("clean, FGSM and PGD accuracy, and what the z-score screen flagged")
    integrity: list = described("sha256 and weights-only loading checks")
    config_audit: list = described("the TorchServe configuration, item by item, with the fix")
    fuzz: dict = described("the fuzzed front door in process: mutations, accepted, refused by reason code, "
                           "crashes (with the first ones to replay), by mutation kind (lab2prod.studies.fuzz)")


# ---------------------------------------------------------------- hostile inputs






def try_inputs(path, inputs: list[tuple[str, object]]) -> list[dict]:
    """Each input through a guarded request path (a lab2prod.kinds.codec codec, or any callable that
    raises Rejected): rejected?, the reason code and message, and whether anything other than a
    Rejected was raised (a crash)."""
    rows = []
    for name, payload in inputs:
        row = {"input": name, "rejected": False, "reason": None, "message": "", "crashed": False}
        try:
            path(payload)
        except Rejected as exc:
            row.update(rejected=True, reason=exc.code, message=exc.message)
        except Exception as exc:  # a crash: the guard let something through to a failure
            row.update(crashed=True, message=f"{type(exc).__name__}: {str(exc)[:100]}")
        rows.append(row)
    return rows


# ---------------------------------------------------------------- adversarial examples


def _normalized(model: torch.nn.Module, mean, std):
    mean_t, std_t = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
    return lambda x01: model((x01 - mean_t) / std_t)


def fgsm(forward, x01: torch.Tensor, labels: torch.Tensor, eps: float) -> torch.Tensor:
    """One signed-gradient step of size eps in [0, 1] pixel space (Goodfellow et al.)."""
    x = x01.clone().requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(forward(x), labels)
    (grad,) = torch.autograd.grad(loss, x)
    return (x01 + eps * grad.sign()).clamp(0, 1).detach()


def pgd(forward, x01: torch.Tensor, labels: torch.Tensor, eps: float, steps: int = 10, seed: int = 0) -> torch.Tensor:
    """Projected gradient descent in the L-inf ball of radius eps (Madry et al.), random start,
    step 2.5 * eps / steps."""
    generator = torch.Generator().manual_seed(seed)
    alpha = 2.5 * eps / steps
    x = (x01 + (torch.rand(x01.shape, generator=generator) * 2 - 1) * eps).clamp(0, 1)
    for _ in range(steps):
        x.requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(forward(x), labels)
        (grad,) = torch.autograd.grad(loss, x)
        x = (x.detach() + alpha * grad.sign()).clamp(x01 - eps, x01 + eps).clamp(0, 1)
    return x.detach()


def adversarial_report(model: torch.nn.Module, x01: torch.Tensor, labels: torch.Tensor, mean, std, eps: float,
                       guard: InputGuard, steps: int = 10, seed: int = 0) -> tuple[dict, dict]:
    """Clean, FGSM and PGD accuracy at `eps` (pixel scale [0, 1]; the model's normalization is
    applied inside the attacked function), and the share of each that the z-score screen flags.
    Returns (numbers, examples) where examples holds the tensors for plotting."""
    model = model.eval()
    forward = _normalized(model, mean, std)
    mean_t, std_t = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
    with torch.enable_grad():
        x_fgsm = fgsm(forward, x01, labels, eps)
        x_pgd = pgd(forward, x01, labels, eps, steps, seed)

    def accuracy(x):
        with torch.inference_mode():
            return float((forward(x).argmax(1) == labels).float().mean())

    def flagged(x):
        normalized = (x - mean_t) / std_t
        scores = [guard.z_score(t) or 0.0 for t in normalized]
        return float(np.mean([score > guard.z_limit for score in scores]))

    numbers = {"eps": eps, "images": len(labels), "clean_accuracy": accuracy(x01), "fgsm_accuracy": accuracy(x_fgsm),
               "pgd_accuracy": accuracy(x_pgd), "pgd_steps": steps,
               "screen_detection_rate": max(flagged(x_fgsm), flagged(x_pgd)),
               "screen_false_alarm_rate": flagged(x01),
               "fgsm_screen_rate": flagged(x_fgsm), "pgd_screen_rate": flagged(x_pgd)}
    return numbers, {"clean": x01, "fgsm": x_fgsm, "pgd": x_pgd}


# ---------------------------------------------------------------- integrity and configuration


def verify_file(path: Path, expected_sha256: str) -> None:
    """Raise Lab2ProdError when the file's sha256 is not the manifest's: check before loading."""

    actual = sha256_file(path)
    if actual != expected_sha256:
        raise Lab2ProdError(f"{Path(path).name}: sha256 {actual[:12]}... does not match the manifest's "
                            f"{expected_sha256[:12]}...; the file was changed after export, do not load it")


def integrity_checks(run_dir: Path, workdir: Path) -> list[dict]:
    """Every file of the run's manifest verified by sha256, every archive free of stored data beyond its example
    batch (`data_payload_limit`), a tampered copy refused, and a whole pickled model refused by weights-only
    loading."""
    import json


    rows = []
    manifest_path = Path(run_dir) / "manifest.json"
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    entries = json.loads(manifest_path.read_text()) if manifest_path.exists() else []
    # every file and the external data an ONNX file needs beside it (its weights)
    files = [(e["file"], e["sha256"]) for e in entries] + [(x["file"], x["sha256"]) for e in entries
                                                           for x in e.get("external_data", [])]
    for name, sha256 in files:
        try:
            verify_file(Path(run_dir) / name, sha256)
            rows.append({"check": f"{name} matches the manifest", "passed": True, "detail": "sha256 ok"})
        except (Lab2ProdError, OSError) as exc:
            rows.append({"check": f"{name} matches the manifest", "passed": False, "detail": str(exc)})
    for entry in entries:  # an archive carries the model, not the data it was exported with
        payload = entry.get("payload")
        if payload is None:
            continue
        limit = data_payload_limit(payload["weights_bytes"], entry.get("example_bytes", 0))
        passed = payload["data_bytes"] <= limit
        rows.append({"check": f"{entry['file']} carries no data set", "passed": passed,
                     "detail": (f"{payload['data_bytes']:,} bytes of stored inputs (limit {limit:,}; weights "
                                f"{payload['weights_bytes']:,})") + ("" if passed else
                     ": the example inputs share a larger tensor's storage; return a copy (data[i:i + n].clone())")})
    source = Path(run_dir) / entries[0]["file"] if entries else None
    if source is None:
        model = torch.nn.Linear(4, 2)
        source = workdir / "model.pt"
        torch.save(model.state_dict(), source)

    expected = sha256_file(source)
    tampered = workdir / f"tampered{source.suffix}"
    data = bytearray(source.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tampered.write_bytes(bytes(data))
    try:
        verify_file(tampered, expected)
        rows.append({"check": "a tampered file is refused", "passed": False, "detail": "loaded anyway"})
    except Lab2ProdError as exc:
        rows.append({"check": "a tampered file is refused", "passed": True, "detail": str(exc)[:120]})
    pickled = workdir / "whole_model.pt"
    torch.save(torch.nn.Linear(4, 2), pickled)
    try:
        load_state_dict_file(pickled)
        rows.append({"check": "a pickled model is not unpickled", "passed": False, "detail": "it was loaded"})
    except Lab2ProdError as exc:
        detail = str(exc).replace(str(pickled), pickled.name)
        rows.append({"check": "a pickled model is not unpickled", "passed": True, "detail": detail[:120]})
    return rows










def audit_servers(run_dir: Path) -> tuple[list[dict], list[Path]]:
    """Every registered server's audit of the config this run wrote for it (TorchServe's deployment config is
    written when the serving study did not run), and of the front door's (TLS, a rate limit per client) when the
    resilience study wrote one: the rows, and the files audited."""
    rows, audited = [], []
    for server in SERVERS.values():
        path, items = server.audit(Path(run_dir))
        if path is not None:
            rows += items
            audited.append(path)
    for door in sorted((Path(run_dir) / "frontdoor").glob("*/haproxy.cfg")):
        rows += [{**row, "item": f"{door.parent.name} front door: {row['item']}"} for row in audit_config(door)]
        audited.append(door)
    return rows, audited


def try_live(loaded, run_dir: Path, inputs: list[tuple[str, object]], tried: list[dict], seed: int = 0,
             max_bytes: int = 1_000_000, server: Server | None = None) -> list[dict]:
    """Send the byte inputs (and requests without or with a wrong token) to a real server (TorchServe unless
    `server` names another of the registry) whose request path runs the guard (with the model's content type:
    JSON for text and tensor models); after each, check that a good request still gets an answer. The server
    runs in `run_dir/security` and is stopped before this returns."""
    server = server or SERVERS["torchserve"]
    content_type = codec_for(loaded, guarded=False).content_type
    limit = 2 * max(len(p) for _, p in inputs if isinstance(p, bytes))
    rows = [dict(r) for r in tried]
    with server.serve(loaded, Path(run_dir) / "security", ServerConfig(workers=1, threads=1, max_request_size=limit),
                      seed, guard_max_bytes=max_bytes) as live:
        name = live.model
        good = request_images(loaded, 1, seed)[0][1]
        by_name = {r["input"]: r for r in rows}
        for label, payload in inputs:
            row = by_name[label]
            if not isinstance(payload, bytes):
                row.update(server_status=None, server_reason="not sent: HTTP carries bytes", server_alive=None)
                continue
            status, body = live.predict(name, payload, content_type=content_type)
            try:
                reason = json.loads(body).get("rejected") or json.loads(body).get("code")
            except (json.JSONDecodeError, AttributeError):
                reason = None
            row.update(server_status=status, server_reason=reason or f"HTTP {status}",
                       server_alive=live.predict(name, good, content_type=content_type)[0] == 200)
        for label, token in (("no token", None), ("wrong token", "not-the-token")):
            status, _ = live.predict(name, good, token=token, content_type=content_type)
            rows.append({"input": label, "rejected": status != 200, "reason": f"HTTP {status}", "message": "",
                         "crashed": False, "server_status": status, "server_reason": f"HTTP {status}",
                         "server_alive": live.predict(name, good, content_type=content_type)[0] == 200})
    return rows


def security_gates(tried: list[dict] | None, integrity: list[dict], audit: list[dict], reason: str = "") -> list[dict]:
    """`security:inputs` (every bad input refused with a reason, nothing crashed, and a live server
    still answering; skipped with `reason` when `tried` is None), `security:integrity` (every
    integrity check passes) and `security:config` (every audit item passes)."""

    if tried is None:
        gates = [gate("security:inputs", False, None, None, reason, skipped=True)]
    else:
        refused = sum(bool(r["rejected"] and r["reason"] and not r["crashed"]) for r in tried)
        alive = all(r.get("server_alive", True) is not False for r in tried)
        gates = [gate("security:inputs", bool(tried) and refused == len(tried) and alive, refused, len(tried),
                      f"{refused} of {len(tried)} refused with a reason"
                      + ("" if alive else "; the server stopped answering"))]
    return gates + [
        gate("security:integrity", all(r["passed"] for r in integrity), sum(r["passed"] for r in integrity),
             len(integrity), "; ".join(r["check"] for r in integrity if not r["passed"]) or "all pass"),
        gate("security:config", all(r["passed"] for r in audit), sum(r["passed"] for r in audit), len(audit),
             "; ".join(f"{r['item']}: {r['fix']}" for r in audit if not r["passed"]) or "all pass"),
    ]


# ---------------------------------------------------------------- tables and plots of the notebook


def plot_adversarial(examples: dict, count: int = 4):
    """Clean images, FGSM and PGD versions, and the PGD perturbation (scaled to be visible)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(count, 4, figsize=(7, 1.8 * count), squeeze=False)
    for row in range(count):
        clean, fgsm_x, pgd_x = (examples[k][row].permute(1, 2, 0).numpy() for k in ("clean", "fgsm", "pgd"))
        delta = pgd_x - clean
        shown = [clean, fgsm_x, pgd_x, 0.5 + delta / (2 * max(abs(delta).max(), 1e-9))]
        for col, (image, title) in enumerate(zip(shown, ["clean", "FGSM", "PGD", "PGD - clean"], strict=True)):
            ax = axes[row][col]
            ax.imshow(image.clip(0, 1))
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig
