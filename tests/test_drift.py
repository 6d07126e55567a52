"""Drift statistics against independent implementations, and the exporter's metrics."""

import numpy as np
import pytest
import torch
from scipy.stats import ks_2samp

from lab2prod.kinds.image import image_features
from lab2prod.kinds.text import text_features
from lab2prod.studies import drift


def _naive_mmd2(x, y, bandwidth):
    """Unbiased MMD^2 written as the textbook triple sum, loop by loop."""
    def k(a, b):
        return np.exp(-np.sum((a - b) ** 2) / (2 * bandwidth**2))

    n, m = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return xx + yy - 2 * xy


def test_mmd_matches_the_textbook_sum_and_the_median_heuristic():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(12, 3)), rng.normal(0.5, 1, size=(9, 3))
    pooled = np.concatenate([x, y])
    distances = [np.linalg.norm(a - b) for i, a in enumerate(pooled) for b in pooled[i + 1:]]
    assert drift.median_bandwidth(x, y) == pytest.approx(np.median(distances))
    assert drift.mmd2_unbiased(x, y, 1.3) == pytest.approx(_naive_mmd2(x, y, 1.3), rel=1e-9)


def test_mmd_permutation_p_value_matches_a_plain_loop():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(15, 2)), rng.normal(0.8, 1, size=(10, 2))
    statistic, p_value = drift.mmd_test(x, y, permutations=99, seed=3, bandwidth=1.0)
    generator = torch.Generator().manual_seed(3)
    pooled = np.concatenate([x, y])
    larger = 0
    for _ in range(99):
        chosen = torch.randperm(len(pooled), generator=generator)[:15].numpy()
        mask = np.zeros(len(pooled), dtype=bool)
        mask[chosen] = True
        larger += drift.mmd2_unbiased(pooled[mask], pooled[~mask], 1.0) >= statistic - 1e-12
    assert p_value == pytest.approx((1 + larger) / 100)


def test_mmd_test_separates_shifted_samples_and_not_identical_ones():
    rng = np.random.default_rng(2)
    same = drift.mmd_test(rng.normal(size=(60, 4)), rng.normal(size=(40, 4)), seed=0)[1]
    shifted = drift.mmd_test(rng.normal(size=(60, 4)), rng.normal(1.0, 1, size=(40, 4)), seed=0)[1]
    assert shifted <= 0.01 < same


def test_ks_matches_scipy_with_ties_and_bonferroni():
    rng = np.random.default_rng(3)
    x = np.maximum(rng.normal(size=(50, 6)), 0)  # ReLU-like: many ties at zero
    y = np.maximum(rng.normal(0.3, 1, size=(30, 6)), 0)
    reference = ks_2samp(x, y, axis=0, method="asymp")
    assert np.allclose(drift.ks_statistics(x, y), reference.statistic)
    largest, p_value = drift.ks_test(x, y)
    assert largest == pytest.approx(reference.statistic.max())
    assert p_value == pytest.approx(min(1.0, reference.pvalue.min() * 6))
    assert drift.ks_test(np.ones((5, 2)), np.ones((4, 2))) == (0.0, 1.0)


def test_psi_on_known_distributions():
    assert drift.psi(np.array([0, 1] * 50), np.array([0, 1] * 50), 2) == pytest.approx(0.0)
    expected = (0.9 - 0.5) * np.log(0.9 / 0.5) + (0.1 - 0.5) * np.log(0.1 / 0.5)
    assert drift.psi(np.array([0] * 50 + [1] * 50), np.array([0] * 90 + [1] * 10), 2, eps=0) == pytest.approx(expected)
    assert drift.psi_test(np.array([0] * 50 + [1] * 50), np.array([0] * 60), 2)[1] < 0.05


def test_image_properties_and_shifts():
    from PIL import Image

    image = Image.new("RGB", (40, 20), (100, 100, 100))
    (row,) = image_features([image])
    assert row[0] == pytest.approx(100 / 255, abs=1e-3) and row[1] == pytest.approx(0, abs=1e-6)
    assert tuple(row[2:]) == (40, 20, 2.0)
    brighter = drift.scenario_images([image], "brighter (x1.5)")[0]
    assert image_features([brighter])[0][0] > row[0]
    with pytest.raises(Exception, match="not known"):
        drift.scenario_images([image], "fog")


def test_exporter_puts_a_bucket_on_the_sla():
    exporter = drift.MetricsExporter(sla_ms=120)
    exporter.latency.observe(0.11)
    exporter.requests.labels(outcome="rejected").inc()
    exporter.drift.labels(test="mmd").set(0.7)
    text = exporter.exposition()
    assert 'inference_latency_seconds_bucket{le="0.12"} 1.0' in text
    assert 'inference_requests_total{outcome="rejected"} 1.0' in text and 'data_drift_score{test="mmd"} 0.7' in text


def test_embeddings_are_the_input_of_the_last_linear_layer():
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3))
    x = torch.randn(5, 4)
    embedded, logits = drift.embeddings(model, x)
    assert embedded.shape == (5, 6) and np.allclose(embedded, torch.relu(model[0](x)).detach().numpy())
    assert logits.shape == (5, 3)


def test_embeddings_from_a_named_layer_or_an_embedders_output_and_a_clear_error_for_an_unknown_one():
    from lab2prod.core.errors import Lab2ProdError

    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3)).eval()
    x = torch.randn(10, 4)
    named, out = drift.embeddings(model, x, layer="1")
    assert np.allclose(named, torch.relu(model[0](x)).detach().numpy(), atol=1e-6) and out.shape == (10, 3)
    vectors, _ = drift.embeddings(model, x, task="embedder")
    assert np.allclose(vectors, model(x).detach().numpy(), atol=1e-6)
    assert "output of layer '1'" in drift.embedding_layer(model, "1")[0]
    with pytest.raises(Lab2ProdError, match="layer 'fc9' is not in the model; use one of 0, 1, 2"):
        drift.embeddings(model, x, layer="fc9")


def test_a_tensor_model_without_labels_gets_tensor_shifts_and_is_judged_on_false_positives():
    from lab2prod.models.load import load_model

    loaded = load_model("lab2prod.examples:token_classifier", example_inputs="lab2prod.examples:token_inputs")
    report = drift.evaluate_drift(loaded, batch_size=32, batches=10, seed=0)
    assert report.applies and "input function" in report.reference and "head" in report.embedding
    scenarios = {r["scenario"] for r in report.scenarios}
    assert scenarios == {"no shift", "other ids (drawn in range)", "first half of each sequence"}
    cut = {r["test"]: r["detection_rate"] for r in report.scenarios if r["scenario"] == "first half of each sequence"}
    assert cut["ks_input_properties"] == 1.0  # half the tokens gone: the lengths show it every time
    assert all(r["accuracy"] is None for r in report.scenarios)
    assert "no labels" in drift.drift_gate(report)["detail"]


def test_text_shifts_and_properties():
    rng = np.random.default_rng(0)
    text = "The Battery lasts 2 days"
    assert drift.TEXT_SHIFTS["upper case"](text, rng) == text.upper()
    assert drift.TEXT_SHIFTS["first 4 words only"](text, rng) == "The Battery lasts 2"
    typo = drift.TEXT_SHIFTS["typos (1 letter in 6)"](text * 10, rng)
    assert len(typo) == len(text) * 10 and typo != text * 10
    (row,) = text_features([text])
    assert row[0] == len(text) and row[1] == 5 and row[3] == 1 / len(text)


def test_a_text_model_needs_your_texts_and_says_so(tmp_path):
    import os

    pytest.importorskip("transformers")
    os.environ["HF_HUB_OFFLINE"] = "1"
    from lab2prod.examples import save_hf_example
    from lab2prod.models.load import load_model

    folder = save_hf_example(str(tmp_path / "bert"), layers=1, hidden=32, train_steps=0)
    report = drift.evaluate_drift(load_model(f"hf:{folder}"), batch_size=16, batches=2)
    assert not report.applies and "--data texts.csv" in report.reason
    texts = tmp_path / "texts.csv"
    from lab2prod.models.hf import SAMPLE_TEXTS

    texts.write_text("text\n" + "\n".join(f'"{t} {i}"' for i in range(4) for t in SAMPLE_TEXTS) + "\n")
    report = drift.evaluate_drift(load_model(f"hf:{folder}", data=str(texts)), batch_size=16, batches=4)
    assert report.applies and report.reference_size == 64
    assert "another source: the bundled sample texts" in {r["scenario"] for r in report.scenarios}
