"""The card's held-out numbers: AUCs and the trust thresholds on test rows, with
lesion-bootstrap intervals, checked against direct computation."""

import numpy as np
from sklearn.metrics import roc_auc_score

from dermfuse.evaluation.metrics import compute_metrics
from dermfuse.inference.trust import Melanoma, Selective, Trust
from dermfuse.runs.release import auc_bootstrap, operating_points

CLASSES = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]


def _rows(n=300, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, len(CLASSES), n)
    logits = rng.normal(size=(n, len(CLASSES)))
    logits[np.arange(n), y] += 1.5
    proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    groups = np.repeat(np.arange(n // 3), 3)  # three images per lesion
    return y, proba, groups


def test_auc_values_match_sklearn_and_intervals_bracket_them():
    y, proba, groups = _rows()
    out = auc_bootstrap(y, proba, groups, CLASSES, n_boot=200)
    assert np.isclose(out["macro_auc"]["value"], compute_metrics(y, proba, CLASSES)["auc_macro"])
    assert np.isclose(out["melanoma_auc"]["value"], roc_auc_score(y == 4, proba[:, 4]))
    for v in out.values():
        assert v["low"] <= v["value"] <= v["high"] and v["high"] - v["low"] > 0


def test_operating_points_apply_the_given_thresholds():
    y, proba, groups = _rows()
    trust = Trust(Selective(0.5, 0.9, 0.9, 100), None, Melanoma(0.2, 0.85, 0.85, 0.8, 20, 100))
    out = operating_points(y, proba, groups, CLASSES, trust, n_boot=200)
    answered = proba.max(1) >= 0.5
    sel = out["selective"]
    assert np.isclose(sel["coverage"]["value"], answered.mean())
    assert np.isclose(sel["accuracy_answered"]["value"], (proba.argmax(1) == y)[answered].mean())
    flag = proba[:, 4] >= 0.2
    mel = out["melanoma"]
    assert np.isclose(mel["sensitivity"]["value"], flag[y == 4].mean())
    assert np.isclose(mel["specificity"]["value"], (~flag[y != 4]).mean())
    assert mel["n_mel"] == int((y == 4).sum())
    for v in (sel["coverage"], sel["balanced_accuracy_answered"], mel["sensitivity"], mel["specificity"]):
        assert v["low"] <= v["value"] <= v["high"]


def test_resampling_keeps_lesions_whole():
    """Identical images within a lesion: resampling lesions gives a wider interval than the
    same rows treated as independent (one image per lesion)."""
    y, proba, _ = _rows(n=100)
    y3, p3 = np.repeat(y, 3), np.repeat(proba, 3, axis=0)
    trust = Trust(Selective(0.5, 0.9, 0.9, 100))
    by_lesion = operating_points(y3, p3, np.repeat(np.arange(100), 3), CLASSES, trust, n_boot=400)
    by_image = operating_points(y3, p3, np.arange(300), CLASSES, trust, n_boot=400)
    width = lambda o: o["selective"]["coverage"]["high"] - o["selective"]["coverage"]["low"]  # noqa: E731
    assert width(by_lesion) > 1.3 * width(by_image)


def test_decision_metrics_score_decided_classes():
    """`evaluate --operating-point melanoma` passes class indices, not probabilities."""
    from dermfuse.runs.evaluate import decision_metrics

    y = np.array([4, 4, 0, 1, 4, 5])
    decided = np.array([4, 0, 0, 1, 4, 4])
    m = decision_metrics(y, decided, CLASSES)
    assert np.isclose(m["accuracy"], 4 / 6) and np.isclose(m["melanoma_sensitivity"], 2 / 3)
    assert np.isclose(m["balanced_accuracy"], np.mean([1, 1, 2 / 3, 0])) and "auc_macro" not in m


def test_card_marks_small_subgroups_and_says_whose_thresholds_it_reports():
    from dermfuse.evaluation.subgroups import MIN_IMAGES
    from dermfuse.inference.card import render_card

    ci = {"value": 0.7, "low": 0.6, "high": 0.8}
    hold = {"operating_points": {"selective": {"threshold": 0.5, "target_coverage": 0.9, "coverage": ci}},
            "subgroups": {"sex": {"female": {"n": MIN_IMAGES, "balanced_accuracy": ci},
                                  "unknown": {"n": MIN_IMAGES - 1, "balanced_accuracy": ci}}}}
    text = render_card({"name": "m", "performance": {"holdout": hold}})
    rows = {line.split()[0]: line for line in text.splitlines() if line.startswith("    ") and "(" in line}
    assert "too few to judge" in rows["unknown"] and "too few to judge" not in rows["female"]
    assert "the holdout run's own thresholds" in text
