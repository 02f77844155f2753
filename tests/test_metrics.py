"""Metrics against the official ISIC scorer (isic-challenge-scoring), sklearn and hand
computations."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import sklearn.metrics as skm
from isic_challenge_scoring import metrics as isic_metrics
from isic_challenge_scoring.classification import ClassificationMetric, ClassificationScore

from dermfuse import HAM10000_CLASSES
from dermfuse.evaluation.metrics import accuracy, auc_macro, balanced_accuracy, compute_metrics, confusion_matrix, confusion_metrics, expected_calibration_error, log_loss, macro_f1, melanoma_sensitivity, paired_bootstrap, sensitivity_at_specificity, per_class_report, weighted_f1

# The official scorer's own dependencies (rdp, pandas) warn on current numpy/pandas.
pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning:rdp"),
    pytest.mark.filterwarnings("ignore:The inplace keyword"),
    pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true"),
]

CLASSES = list(HAM10000_CLASSES)
C = len(CLASSES)


def _random_case(n: int = 400, seed: int = 0, absent: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Skewed labels, probabilities that lean towards the truth (so metrics are not ~chance)."""
    rng = np.random.default_rng(seed)
    y = rng.choice(C, size=n, p=[0.05, 0.08, 0.12, 0.03, 0.12, 0.55, 0.05])
    if absent is not None:
        y[y == absent] = (absent + 1) % C
    y[:C] = [k if k != absent else (k + 1) % C for k in range(C)]
    logits = rng.normal(size=(n, C)) + 1.5 * np.eye(C)[y]
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, proba


def _isic_score(y: np.ndarray, proba: np.ndarray) -> ClassificationScore:
    index = pd.Index([f"ISIC_{i:07d}" for i in range(len(y))], name="image")
    truth = pd.DataFrame(np.eye(C)[y], columns=CLASSES, index=index)
    pred = pd.DataFrame(proba, columns=CLASSES, index=index)
    weights = pd.DataFrame({"score_weight": 1.0, "validation_weight": 1.0}, index=index)
    return ClassificationScore(truth, pred, weights, ClassificationMetric.BALANCED_ACCURACY)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_balanced_accuracy_and_auc_equal_isic(seed: int) -> None:
    y, proba = _random_case(seed=seed)
    score = _isic_score(y, proba)
    assert balanced_accuracy(y, proba) == pytest.approx(score.aggregate["balanced_accuracy"], abs=1e-9)
    report = per_class_report(y, proba, CLASSES)
    for name in CLASSES:
        assert report[name]["auc"] == pytest.approx(score.per_category.loc[name, "auc"], abs=1e-9)
    assert auc_macro(y, proba) == pytest.approx(score.macro_average["auc"], abs=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_per_class_sensitivity_specificity_equal_isic(seed: int) -> None:
    # ISIC scores each category at proba > 0.5; ours use the argmax decision. On one-hot
    # argmax predictions the two decisions are the same, so the numbers must agree.
    y, proba = _random_case(seed=seed)
    decided = np.eye(C)[proba.argmax(axis=1)]
    score = _isic_score(y, decided)
    report = per_class_report(y, proba, CLASSES)
    for name in CLASSES:
        assert report[name]["sensitivity"] == pytest.approx(score.per_category.loc[name, "sensitivity"], abs=1e-9)
        assert report[name]["specificity"] == pytest.approx(score.per_category.loc[name, "specificity"], abs=1e-9)
        assert report[name]["precision"] == pytest.approx(score.per_category.loc[name, "ppv"], abs=1e-9)
        assert report[name]["f1"] == pytest.approx(score.per_category.loc[name, "dice"], abs=1e-9)


def test_balanced_accuracy_skips_absent_classes_like_isic() -> None:
    y, proba = _random_case(seed=3, absent=3)  # no 'df' in the truth
    assert not (y == 3).any()
    labels = pd.Series(np.array(CLASSES)[y])
    preds = pd.Series(np.array(CLASSES)[proba.argmax(axis=1)])
    ones = pd.Series(np.ones(len(y)))
    official = isic_metrics._label_balanced_multiclass_accuracy(labels, preds, ones, pd.Index(CLASSES))
    assert balanced_accuracy(y, proba) == pytest.approx(official, abs=1e-9)
    assert balanced_accuracy(y, proba) == pytest.approx(skm.balanced_accuracy_score(y, proba.argmax(1)), abs=1e-12)
    assert math.isnan(per_class_report(y, proba, CLASSES)["df"]["auc"])


def test_f1_accuracy_log_loss_equal_sklearn() -> None:
    y, proba = _random_case(seed=4)
    pred = proba.argmax(axis=1)
    assert accuracy(y, proba) == pytest.approx(skm.accuracy_score(y, pred))
    assert macro_f1(y, proba) == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert weighted_f1(y, proba) == pytest.approx(skm.f1_score(y, pred, average="weighted"))
    assert log_loss(y, proba) == pytest.approx(skm.log_loss(y, proba, labels=range(C)))
    # clipped: a zero probability on the true class is finite
    assert math.isfinite(log_loss([0], [[0.0, 1.0]]))


def test_confusion_matrix() -> None:
    y = np.array([0, 0, 1, 2, 2, 2])
    pred = np.array([0, 1, 1, 2, 0, 2])
    expected = np.array([[1, 1, 0], [0, 1, 0], [1, 0, 2]])
    np.testing.assert_array_equal(confusion_matrix(y, pred), expected)
    np.testing.assert_array_equal(confusion_matrix(y, np.eye(4)[pred]), np.pad(expected, (0, 1)))
    np.testing.assert_array_equal(confusion_matrix(y, pred), skm.confusion_matrix(y, pred))


def test_ece_hand_computed() -> None:
    # 5 bins (0,.2] (.2,.4] (.4,.6] (.6,.8] (.8,1]; a confidence on an edge goes to the lower bin.
    proba = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.45, 0.55]])
    y = np.array([0, 1, 1, 0])  # correct, wrong, correct, wrong
    # bin (.8,1]: {.9} acc 1 -> |1-.9| * 1/4 = .025
    # bin (.6,.8]: {.8, .7} acc .5, conf .75 -> .25 * 2/4 = .125
    # bin (.4,.6]: {.55} acc 0 -> .55 * 1/4 = .1375
    assert expected_calibration_error(y, proba, n_bins=5) == pytest.approx(0.2875, abs=1e-12)
    assert expected_calibration_error([0, 1], [[1.0, 0.0], [0.0, 1.0]]) == pytest.approx(0.0)


def test_melanoma_sensitivity() -> None:
    mel = CLASSES.index("mel")
    y = np.array([mel, mel, mel, mel, 0, 5])
    pred = np.array([mel, mel, 5, mel, mel, 5])
    proba = np.eye(C)[pred]
    assert melanoma_sensitivity(y, proba, CLASSES) == pytest.approx(0.75)
    assert melanoma_sensitivity(np.array([0, 5]), np.eye(C)[[0, 5]], CLASSES) is None  # no melanoma
    assert melanoma_sensitivity(y[y < 2], np.eye(2)[[0]], ["a", "b"]) is None  # no 'mel' class


def test_compute_metrics_is_json_with_none_for_undefined() -> None:
    y, proba = _random_case(seed=5, absent=6)
    out = compute_metrics(y, proba, CLASSES)
    json.dumps(out, allow_nan=False)
    assert out["n_images"] == len(y)
    assert out["per_class"]["vasc"]["auc"] is None and out["per_class"]["vasc"]["support"] == 0
    assert len(out["confusion_matrix"]) == C
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "weighted_f1", "auc_macro", "ece", "log_loss"):
        assert isinstance(out[key], float), key
    assert out["melanoma_sensitivity"] == out["per_class"]["mel"]["sensitivity"]


def test_bad_shapes_are_rejected() -> None:
    with pytest.raises(ValueError, match="proba"):
        balanced_accuracy([0, 1], np.ones((3, 2)) / 2)
    with pytest.raises(ValueError, match="class names"):
        compute_metrics([0, 1], np.ones((2, 2)) / 2, CLASSES)


@pytest.mark.parametrize("absent", [None, 3])
def test_confusion_metrics_equal_compute_metrics(absent: int | None) -> None:
    """The bootstrap's confusion-matrix formulas agree with the metrics they resample,
    including a class absent from the labels but present among the predictions."""
    y, proba = _random_case(seed=5, absent=absent)
    pred = proba.argmax(1)
    if absent is not None:
        pred[-5:] = absent
    got = confusion_metrics(confusion_matrix(y, pred, C), mel=CLASSES.index("mel"))
    assert got["accuracy"] == pytest.approx(accuracy(y, pred))
    assert got["balanced_accuracy"] == pytest.approx(balanced_accuracy(y, pred))
    assert got["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro", zero_division=0))
    assert got["melanoma_sensitivity"] == pytest.approx(np.mean(pred[y == CLASSES.index("mel")] == CLASSES.index("mel")))


def test_paired_bootstrap_same_predictions_differ_by_nothing() -> None:
    y, proba = _random_case(seed=6)
    pred = proba.argmax(1)
    out = paired_bootstrap(y, pred, pred, np.arange(len(y)), CLASSES, n_boot=200)
    for m in ("accuracy", "balanced_accuracy", "macro_f1", "melanoma_sensitivity"):
        assert out[m] == {"diff": 0.0, "low": 0.0, "high": 0.0}


def test_paired_bootstrap_finds_a_real_improvement_and_its_size() -> None:
    y, proba = _random_case(n=600, seed=7)
    ref = proba.argmax(1)
    better = ref.copy()
    wrong = np.flatnonzero(ref != y)
    better[wrong[: len(wrong) // 2]] = y[wrong[: len(wrong) // 2]]  # fix half of the errors
    out = paired_bootstrap(y, better, ref, np.arange(len(y)), CLASSES, n_boot=500)
    acc = out["accuracy"]
    assert acc["diff"] == pytest.approx(accuracy(y, better) - accuracy(y, ref))
    assert 0 < acc["low"] < acc["diff"] < acc["high"]
    # the other way round: the same size with the sign flipped, and an interval below 0
    back = paired_bootstrap(y, ref, better, np.arange(len(y)), CLASSES, n_boot=500)["accuracy"]
    assert back["diff"] == pytest.approx(-acc["diff"]) and back["high"] < 0


def test_paired_bootstrap_resamples_whole_lesions() -> None:
    """Ten images of one lesion share its outcome: resampling lesions must give a much
    wider interval than treating the ten copies as independent images."""
    rng = np.random.default_rng(8)
    n_lesions = 80
    y0 = rng.integers(0, C, n_lesions)
    a0 = np.where(rng.random(n_lesions) < 0.7, y0, (y0 + 1) % C)
    b0 = np.where(rng.random(n_lesions) < 0.6, y0, (y0 + 2) % C)
    y, a, b = (np.repeat(v, 10) for v in (y0, a0, b0))
    lesions = np.repeat(np.arange(n_lesions), 10)
    by_lesion = paired_bootstrap(y, a, b, lesions, CLASSES, n_boot=600)["accuracy"]
    by_image = paired_bootstrap(y, a, b, np.arange(len(y)), CLASSES, n_boot=600)["accuracy"]
    assert by_lesion["diff"] == pytest.approx(by_image["diff"])
    width = lambda d: d["high"] - d["low"]  # noqa: E731
    assert width(by_lesion) > 2 * width(by_image)


def test_paired_bootstrap_rejects_unpaired_rows() -> None:
    with pytest.raises(ValueError, match="same, non-empty rows"):
        paired_bootstrap(np.zeros(4, int), np.zeros(4, int), np.zeros(3, int), np.arange(4), CLASSES)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("spec", [0.5, 0.9, 0.95])
def test_sensitivity_at_specificity_matches_sklearns_roc_curve(seed: int, spec: float) -> None:
    from sklearn.metrics import roc_curve
    rng = np.random.default_rng(seed)
    pos = rng.random(300) < 0.2
    score = np.round(rng.normal(pos * 1.2, 1.0), 1)  # rounded: many ties
    fpr, tpr, _ = roc_curve(pos, score)
    expected = tpr[fpr <= 1 - spec + 1e-12].max()
    assert sensitivity_at_specificity(pos, score, spec) == pytest.approx(expected)


def test_sensitivity_at_specificity_edges() -> None:
    pos = np.array([1, 1] + [0] * 10, bool)
    score = np.array([0.9, 0.3, 0.8] + [0.1] * 9)
    assert sensitivity_at_specificity(pos, score, 0.9) == pytest.approx(1.0)  # one of ten negatives may be positive
    assert sensitivity_at_specificity(pos, score, 1.0) == pytest.approx(0.5)  # none: only 0.9 clears 0.8
    assert sensitivity_at_specificity(pos, score, 0.0) == 1.0
    assert math.isnan(sensitivity_at_specificity(pos[:2], score[:2]))  # no negatives
    with pytest.raises(ValueError, match="specificity"):
        sensitivity_at_specificity(pos, score, 1.5)
