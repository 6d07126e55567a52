"""Generated Kubernetes manifests: valid against the Kubernetes schema, and saying what was tuned."""

import pytest
import yaml

from lab2prod.core.errors import Lab2ProdError
from lab2prod.servers import kubernetes


def _by_kind(documents):
    return {d["kind"]: d for d in documents}


@pytest.mark.parametrize("autoscale_on", ["cpu", "queue"])
def test_manifests_pass_the_strict_schema_check(autoscale_on):
    documents = kubernetes.manifests("digits", workers=2, threads=1, batch_size=4, autoscale_on=autoscale_on)
    assert [d["kind"] for d in documents] == ["ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler"]
    assert kubernetes.validate(documents) == []


def test_schema_check_catches_wrong_types_and_unknown_fields():
    documents = kubernetes.manifests("digits")
    _by_kind(documents)["Deployment"]["spec"]["replicas"] = "two"
    _by_kind(documents)["Service"]["spec"]["portz"] = []
    problems = kubernetes.validate(documents)
    assert any("Deployment digits: spec.replicas" in p for p in problems)
    assert any("Service digits" in p and "portz" in p for p in problems)


def test_deployment_limits_probe_and_config_follow_the_tuned_configuration():
    kinds = _by_kind(kubernetes.manifests("digits", workers=2, threads=3, batch_size=4, max_batch_delay_ms=7))
    container = kinds["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"] == {"cpu": "6", "memory": "2Gi"}
    assert container["resources"]["requests"] == container["resources"]["limits"]  # guaranteed QoS
    assert {e["name"]: e["value"] for e in container["env"]}["OMP_NUM_THREADS"] == "3"
    probe = container["readinessProbe"]["exec"]["command"]
    assert probe[:2] == ["python3", "-c"] and "key_file.json" in probe[2] and "/ping" in probe[2]
    compile(probe[2], "probe", "exec")  # the probe is valid Python
    config = kinds["ConfigMap"]["data"]["config.properties"]
    assert "management_address=http://127.0.0.1:8081" in config and "enable_model_api=false" in config
    assert '"minWorkers": 2' in config and '"batchSize": 4' in config and '"maxBatchDelay": 7' in config
    assert "disable_token" not in config  # token authorization stays on
    hpa = kinds["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"]["name"] == "digits" and hpa["minReplicas"] <= hpa["maxReplicas"]


@pytest.mark.parametrize("kwargs, message", [
    ({"name": "Digits_CNN"}, "not a valid Kubernetes name"),
    ({"name": "digits", "threads": 0}, "must be at least 1"),
    ({"name": "digits", "replicas": 9}, "between 1 and max_replicas"),
    ({"name": "digits", "autoscale_on": "memory"}, "use 'cpu' or 'queue'"),
])
def test_bad_values_are_clear_errors(kwargs, message):
    with pytest.raises(Lab2ProdError, match=message):
        kubernetes.manifests(**kwargs)


def test_write_deployment_writes_yaml_dockerfile_and_context(tmp_path):
    (tmp_path / "model-store").mkdir()
    (tmp_path / "model-store" / "model.mar").write_bytes(b"archive")
    chosen = {"workers": 1, "threads": 2, "batch_size": 4, "max_batch_delay_ms": 5}
    path = kubernetes.write_deployment(tmp_path, "model", chosen, 9, 9, 9, 9)
    documents = list(yaml.safe_load_all(path.read_text()))
    assert kubernetes.validate(documents) == []
    limits = _by_kind(documents)["Deployment"]["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["cpu"] == "2"  # the chosen configuration wins over the defaults passed
    out = path.parent
    assert (out / "model-store" / "model.mar").read_bytes() == b"archive"
    assert (out / "lab2prod" / "kinds" / "preprocess.py").exists()
    assert "FROM pytorch/torchserve" in (out / "Dockerfile").read_text()
    rows = kubernetes.describe(path)
    assert [r["kind"] for r in rows] == ["ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler"]
    assert "limits 2 CPU" in rows[1]["what"]
