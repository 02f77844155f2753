import numpy as np
import pytest

from dermfuse.runs.predictions_csv import label_indices, probabilities, proba_columns, read_predictions, write_predictions


def test_round_trip_keeps_ids_labels_and_float32_probabilities(tmp_path):
    classes = ["mel", "nv", "bcc"]
    rng = np.random.default_rng(0)
    proba = rng.dirichlet(np.ones(3), size=5).astype(np.float32)
    y = np.array([0, 1, 2, 1, 0])
    ids = ["007", "ISIC_1", "x", "010", "y"]  # numeric-looking ids stay text
    write_predictions(tmp_path / "p.csv", ids, classes, y, proba, extra={"fold": 3})
    df = read_predictions(tmp_path / "p.csv")
    assert list(df.columns) == ["image_id", "label", "fold", "pred", *proba_columns(classes)]
    assert df["image_id"].tolist() == ids and (df["fold"] == 3).all()
    assert (label_indices(df, classes) == y).all()
    assert df["pred"].tolist() == [classes[i] for i in proba.argmax(1)]
    assert np.array_equal(probabilities(df, classes).astype(np.float32), proba)  # 8 digits: float32 exact
    assert np.allclose(probabilities(df, classes, renormalise=True).sum(1), 1.0, atol=1e-12)


def test_missing_class_column_is_named(tmp_path):
    write_predictions(tmp_path / "p.csv", ["a"], ["mel", "nv"], np.array([0]), np.array([[0.3, 0.7]]))
    with pytest.raises(ValueError, match="p_bcc"):
        probabilities(read_predictions(tmp_path / "p.csv"), ["mel", "nv", "bcc"])


def test_shape_mismatch_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="expected"):
        write_predictions(tmp_path / "p.csv", ["a", "b"], ["mel", "nv"], np.array([0, 1]), np.ones((2, 3)) / 3)


def test_align_puts_rows_in_the_reference_order_and_names_what_differs(tmp_path):
    from dermfuse.runs.predictions_csv import align_predictions

    classes = ["a", "b", "c"]
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]])
    write_predictions(tmp_path / "r.csv", ["x1", "x2", "x3"], classes, np.array([0, 1, 2]), p)
    write_predictions(tmp_path / "o.csv", ["x3", "x1", "x2"], classes, np.array([2, 0, 1]), p[[2, 0, 1]] * 0.5 + 0.5 / 3)
    ref, other = read_predictions(tmp_path / "r.csv"), read_predictions(tmp_path / "o.csv")
    aligned = align_predictions(ref, other, "o.csv")
    assert list(aligned["image_id"]) == ["x1", "x2", "x3"]
    np.testing.assert_allclose(probabilities(aligned, classes), p * 0.5 + 0.5 / 3, rtol=1e-6)
    with pytest.raises(ValueError, match="o.csv: labels differ"):
        align_predictions(ref, other.assign(label=["a", "a", "b"]), "o.csv")
    with pytest.raises(ValueError, match="o.csv: 2 rows on other images"):
        align_predictions(ref, other.iloc[:2], "o.csv")
    with pytest.raises(ValueError, match="o.csv: classes"):
        align_predictions(ref, other.drop(columns="p_c"), "o.csv")
