"""Kubernetes manifests for the served model: TorchServe Deployment, Service and autoscaler, schema-checked."""

from __future__ import annotations

import json
from pathlib import Path

from lab2prod.core.errors import Lab2ProdError
from lab2prod.core.paths import PACKAGE_DIR

__all__ = ["TORCHSERVE_IMAGE", "PING_PROBE", "ping_probe", "pod_config", "manifests", "validate", "write_manifests",
           "write_deployment", "describe"]

TORCHSERVE_IMAGE = "pytorch/torchserve:0.12.0-cpu"
KUBERNETES_VERSION = "1.33"  # the schemas the manifests are checked against

# /ping needs the inference token too, and TorchServe writes a fresh key file at every start, so
# a plain httpGet probe (fixed headers) cannot pass: the probe reads the key file in the pod.
def ping_probe(key_file: str = "/home/model-server/key_file.json", port: int = 8080) -> str:
    """Python for an exec probe: read the inference key, GET /ping with it; exits non-zero
    (an exception) unless TorchServe answers 200."""
    return ("import json, urllib.request as r; "
            f"key = json.load(open({key_file!r}))['inference']['key']; "
            f"r.urlopen(r.Request('http://127.0.0.1:{int(port)}/ping', headers={{'Authorization': 'Bearer ' + key}}), "
            "timeout=2)")


PING_PROBE = ping_probe()


def pod_config(name: str, workers: int, batch_size: int, max_batch_delay_ms: int,
               max_request_size: int = 1_000_000) -> str:
    """config.properties inside the pod. Inference and metrics listen on all of the pod's
    interfaces (the Service and Prometheus reach them through the pod network); management stays
    on the pod's loopback, the model API is off and token authorization stays on."""
    models = {name: {"1.0": {"defaultVersion": True, "marName": f"{name}.mar", "minWorkers": workers,
                             "maxWorkers": workers, "batchSize": batch_size, "maxBatchDelay": max_batch_delay_ms,
                             "responseTimeout": 60}}}
    return "\n".join([
        "inference_address=http://0.0.0.0:8080",
        "management_address=http://127.0.0.1:8081",
        "metrics_address=http://0.0.0.0:8082",
        "metrics_mode=prometheus",
        "model_store=/home/model-server/model-store",
        f"load_models={name}.mar",
        f"models={json.dumps(models)}",
        "enable_model_api=false",
        "allowed_urls=file://.*\\.mar",
        f"max_request_size={max_request_size}",
        f"max_response_size={max_request_size}",
        "install_py_dep_per_model=false",
        "disable_system_metrics=true",
    ]) + "\n"


def manifests(name: str, workers: int = 1, threads: int = 1, batch_size: int = 1, max_batch_delay_ms: int = 5,
              image: str = TORCHSERVE_IMAGE, replicas: int = 2, max_replicas: int = 8,
              target_cpu_percent: int = 70, memory: str = "2Gi", autoscale_on: str = "cpu",
              queue_target_us: int = 20_000) -> list[dict]:
    """ConfigMap, Deployment, Service and HorizontalPodAutoscaler (autoscaling/v2) for one model.
    CPU requests and limits are workers x threads cores, so the pod gets exactly what the tuned
    configuration used; OMP/MKL threads are pinned to match. autoscale_on "queue" scales on
    TorchServe's queue latency (a Pods metric, which needs a metrics adapter such as
    prometheus-adapter) instead of CPU utilisation."""
    if not name or not name.replace("-", "").isalnum() or name != name.lower():
        raise Lab2ProdError(f"name {name!r} is not a valid Kubernetes name; use lower-case letters, digits and -")
    if workers < 1 or threads < 1:
        raise Lab2ProdError(f"workers={workers} and threads={threads} must be at least 1 each: they set the "
                            "CPU limit (use the tuned configuration)")
    if not 1 <= replicas <= max_replicas:
        raise Lab2ProdError(f"replicas={replicas} must be between 1 and max_replicas={max_replicas}")
    if autoscale_on not in ("cpu", "queue"):
        raise Lab2ProdError(f"autoscale_on {autoscale_on!r} is not known; use 'cpu' or 'queue'")
    labels = {"app.kubernetes.io/name": name, "app.kubernetes.io/component": "torchserve",
              "app.kubernetes.io/managed-by": "lab2prod"}
    cores = workers * threads
    probe = {"exec": {"command": ["python3", "-c", PING_PROBE]}, "periodSeconds": 10, "timeoutSeconds": 5,
             "failureThreshold": 3}
    container = {
        "name": "torchserve",
        "image": image,
        "args": ["torchserve", "--start", "--foreground", "--ncs", "--ts-config", "/config/config.properties"],
        "workingDir": "/home/model-server",
        "ports": [{"name": "inference", "containerPort": 8080}, {"name": "metrics", "containerPort": 8082}],
        "env": [{"name": "OMP_NUM_THREADS", "value": str(threads)}, {"name": "MKL_NUM_THREADS", "value": str(threads)},
                {"name": "TS_CONFIG_FILE", "value": "/config/config.properties"}],
        "resources": {"requests": {"cpu": str(cores), "memory": memory},
                      "limits": {"cpu": str(cores), "memory": memory}},
        "readinessProbe": {**probe, "initialDelaySeconds": 10},
        "startupProbe": {**probe, "periodSeconds": 5, "failureThreshold": 60},
        "livenessProbe": {"tcpSocket": {"port": "inference"}, "periodSeconds": 20, "failureThreshold": 3},
        "volumeMounts": [{"name": "config", "mountPath": "/config", "readOnly": True}],
        "securityContext": {"allowPrivilegeEscalation": False, "runAsNonRoot": True,
                            "capabilities": {"drop": ["ALL"]}},
    }
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"{name}-config", "labels": labels},
                  "data": {"config.properties": pod_config(name, workers, batch_size, max_batch_delay_ms)}}
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "labels": labels},
        "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                 "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
                 "template": {"metadata": {"labels": labels, "annotations": {
                     "prometheus.io/scrape": "true", "prometheus.io/port": "8082"}},
                              "spec": {"containers": [container], "terminationGracePeriodSeconds": 30,
                                       "volumes": [{"name": "config", "configMap": {"name": f"{name}-config"}}]}}},
    }
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "labels": labels},
               "spec": {"type": "ClusterIP", "selector": labels,
                        "ports": [{"name": "inference", "port": 8080, "targetPort": "inference"},
                                  {"name": "metrics", "port": 8082, "targetPort": "metrics"}]}}
    if autoscale_on == "cpu":
        metric = {"type": "Resource", "resource": {"name": "cpu", "target": {
            "type": "Utilization", "averageUtilization": target_cpu_percent}}}
    else:
        metric = {"type": "Pods", "pods": {"metric": {"name": "ts_queue_latency_microseconds"},
                                           "target": {"type": "AverageValue", "averageValue": str(queue_target_us)}}}
    autoscaler = {
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": name, "labels": labels},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                 "minReplicas": replicas, "maxReplicas": max_replicas, "metrics": [metric],
                 "behavior": {"scaleDown": {"stabilizationWindowSeconds": 300}}},
    }
    return [config_map, deployment, service, autoscaler]


def validate(documents: list[dict], version: str = KUBERNETES_VERSION) -> list[str]:
    """Check each document against the Kubernetes JSON schema of `version` (strict: unknown
    fields are errors). Returns one line per problem; empty when all are valid."""
    import kubernetes_validate

    problems = []
    for document in documents:
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path) or "(top)"
            problems.append(f"{document.get('kind')} {document['metadata']['name']}: {where}: {exc.message}")
    return problems


def write_manifests(out_dir: Path, documents: list[dict]) -> Path:
    """Write the documents as one multi-document YAML file, `kubernetes.yaml`; refuses to write
    documents that fail the schema check."""
    import yaml

    class Dumper(yaml.SafeDumper):
        def ignore_aliases(self, data):  # repeat the labels rather than write &id001 anchors
            return True

    def text(dumper, value):  # config.properties as a readable literal block
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)

    Dumper.add_representer(str, text)
    problems = validate(documents)
    if problems:
        raise Lab2ProdError(f"generated manifests fail the Kubernetes schema: {problems[0]}")
    path = Path(out_dir) / "kubernetes.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.dump_all(documents, Dumper=Dumper, sort_keys=False))
    return path


DOCKERFILE = """# The served model on TorchServe's image: the archive, and lab2prod's serving path for its handler.
#   docker build -t {image} . && docker push {image}
FROM {base}
COPY model-store/{name}.mar /home/model-server/model-store/{name}.mar
COPY lab2prod/ /home/model-server/lib/lab2prod/
ENV PYTHONPATH=/home/model-server/lib
"""


def write_deployment(serve_dir: Path, name: str, chosen: dict | None, workers: int, threads: int,
                     batch_size: int, max_batch_delay_ms: int, image: str = "") -> Path:
    """serving/kubernetes/: kubernetes.yaml for the chosen configuration (or the given one), and
    a Dockerfile with its build context (the archive and lab2prod's package) for the image the
    Deployment runs. Returns the YAML path."""
    import os
    import shutil

    if chosen:
        workers, threads = chosen["workers"], chosen["threads"]
        batch_size, max_batch_delay_ms = chosen["batch_size"], chosen["max_batch_delay_ms"]
    threads = threads or os.cpu_count() or 1  # 0 meant torch's default: every core of the machine
    image = image or f"lab2prod-{name}:1.0"
    out = Path(serve_dir) / "kubernetes"
    documents = manifests(name, workers, threads, batch_size, max_batch_delay_ms, image=image)
    path = write_manifests(out, documents)
    (out / "model-store").mkdir(exist_ok=True)
    archive = Path(serve_dir) / "model-store" / f"{name}.mar"
    if archive.exists():
        shutil.copyfile(archive, out / "model-store" / archive.name)
    package = PACKAGE_DIR
    shutil.rmtree(out / "lab2prod", ignore_errors=True)
    shutil.copytree(package, out / "lab2prod", ignore=shutil.ignore_patterns("__pycache__", "notebooks"))
    (out / "Dockerfile").write_text(DOCKERFILE.format(image=image, base=TORCHSERVE_IMAGE, name=name))
    return path


def describe(path: Path) -> list[dict]:
    """One row per document of a kubernetes.yaml: kind, name and what matters in it."""
    import yaml

    rows = []
    for document in yaml.safe_load_all(Path(path).read_text()):
        kind, spec = document["kind"], document.get("spec", {})
        if kind == "Deployment":
            container = spec["template"]["spec"]["containers"][0]
            limits = container["resources"]["limits"]
            what = (f"{spec['replicas']} replicas of {container['image']}, limits {limits['cpu']} CPU / "
                    f"{limits['memory']}, readiness: /ping with the token from key_file.json")
        elif kind == "Service":
            what = ", ".join(f"{p['name']} {p['port']}" for p in spec["ports"]) + f" ({spec['type']})"
        elif kind == "HorizontalPodAutoscaler":
            metric = spec["metrics"][0]
            on = (f"CPU {metric['resource']['target']['averageUtilization']}%" if metric["type"] == "Resource"
                  else f"{metric['pods']['metric']['name']} {metric['pods']['target']['averageValue']}")
            what = f"{spec['minReplicas']} to {spec['maxReplicas']} replicas on {on}"
        else:
            what = ", ".join(document.get("data", {}))
        rows.append({"kind": kind, "name": document["metadata"]["name"], "what": what})
    return rows
