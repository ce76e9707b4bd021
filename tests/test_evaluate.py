"""The CARE evaluation protocol (napari_care.core.evaluate)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.optimize import check_grad

from napari_care.core.evaluate import (
    KNN_K_GRID,
    LOGREG_C_GRID,
    _cox_objective,
    _sorted_for_cox,
    concordance_index,
    evaluate_embeddings,
    fit_cox_ridge,
    fold_indices,
    json_safe,
)


def _two_classes(separation: float, n: int = 80, dim: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(["normal", "tumour"], n // 2)
    x = rng.normal(size=(n, dim))
    x += separation * (labels == "tumour")[:, None]  # class means sqrt(dim) * separation apart
    return x, labels


def test_separable_data_scores_near_one(tmp_path):
    x, labels = _two_classes(separation=3.0)
    report = evaluate_embeddings(x, labels, folds=5, seed=0)
    assert report.class_names == ["normal", "tumour"] and report.n_samples == 80
    for model in ("logistic", "knn"):
        assert report.summary[model]["balanced_accuracy"]["mean"] >= 0.95
        assert report.summary[model]["auroc"]["mean"] >= 0.98
        assert report.summary[model]["weighted_f1"]["mean"] >= 0.95
    fold = report.per_fold[0]
    assert (fold.n_train, fold.n_val, fold.n_test) == (48, 16, 16)
    assert fold.chosen["logistic"]["C"] in LOGREG_C_GRID
    assert fold.chosen["knn"]["k"] in KNN_K_GRID and fold.chosen["knn"]["weights"] in ("uniform", "distance")
    written = json.loads(report.write_report(tmp_path / "report.json").read_text())
    assert written["summary"]["logistic"]["auroc"]["mean"] == pytest.approx(
        report.summary["logistic"]["auroc"]["mean"]
    )
    assert len(written["per_fold"]) == 5


def test_noise_scores_near_chance():
    x, labels = _two_classes(separation=0.0, n=90, seed=1)
    report = evaluate_embeddings(x, labels, folds=3, models=("logistic",))
    assert set(report.summary) == {"logistic"}
    assert 0.35 <= report.summary["logistic"]["balanced_accuracy"]["mean"] <= 0.65
    assert 0.3 <= report.summary["logistic"]["auroc"]["mean"] <= 0.7


def test_multiclass_uses_macro_ovr_auroc():
    rng = np.random.default_rng(2)
    labels = np.repeat([2, 0, 1], 30)
    x = rng.normal(size=(90, 6))
    x[np.arange(90), labels] += 5.0
    report = evaluate_embeddings(x, labels, folds=3, models=("logistic",), seed=4)
    assert report.class_names == ["0", "1", "2"]
    assert report.summary["logistic"]["auroc"]["mean"] >= 0.98
    assert report.summary["logistic"]["balanced_accuracy"]["mean"] >= 0.9


def test_folds_partition_and_stratify():
    strata = np.array([0] * 50 + [1] * 25)
    folds = fold_indices(strata, folds=5, seed=7)
    tested = np.concatenate([test for _, _, test in folds])
    assert np.array_equal(np.sort(tested), np.arange(75))  # every sample tested once
    for train, val, test in folds:
        assert not (set(train) & set(val) or set(train) & set(test) or set(val) & set(test))
        assert len(train) + len(val) + len(test) == 75 and len(test) == 15 and len(val) == 15
        assert (strata[test] == 1).sum() == 5
    again = fold_indices(strata, folds=5, seed=7)
    assert all(np.array_equal(a[2], b[2]) for a, b in zip(folds, again, strict=True))
    assert not np.array_equal(folds[0][2], fold_indices(strata, folds=5, seed=8)[0][2])


@pytest.mark.parametrize(
    ("time", "event", "risk", "expected"),
    [
        ([1, 2, 3], [1, 1, 1], [3, 2, 1], 1.0),  # perfect order
        ([1, 2, 3], [1, 1, 1], [1, 2, 3], 0.0),  # reversed
        ([1, 2, 3], [1, 1, 1], [5, 5, 5], 0.5),  # tied risks count one half
        ([1, 2, 3], [1, 0, 1], [2, 3, 1], 0.5),  # pairs (0,1) discordant, (0,2) concordant; 1 censored
        ([2, 2], [1, 0], [1, 0], 1.0),  # tied time, event vs censored: comparable
        ([2, 2, 1], [1, 1, 0], [0, 1, 9], float("nan")),  # no comparable pair: error
        ([1, 2, 2, 3], [1, 1, 0, 0], [4, 3, 3, 2], 4.5 / 5),  # (1,2): tied time comparable, tied risk 1/2
    ],
)
def test_concordance_hand_cases(time, event, risk, expected):
    if math.isnan(expected):
        with pytest.raises(ValueError, match="no comparable pair"):
            concordance_index(time, event, risk)
    else:
        assert concordance_index(time, event, risk) == pytest.approx(expected)


def _naive_c_index(time, event, risk):
    concordant = comparable = 0.0
    for i in range(len(time)):
        for j in range(len(time)):
            if event[i] and (time[i] < time[j] or (time[i] == time[j] and not event[j])):
                comparable += 1
                concordant += 1.0 if risk[i] > risk[j] else 0.5 if risk[i] == risk[j] else 0.0
    return concordant / comparable


def test_concordance_matches_a_naive_double_loop_with_ties():
    rng = np.random.default_rng(3)
    time = rng.integers(1, 15, size=120).astype(float)  # many tied times
    event = rng.random(120) < 0.6
    risk = rng.integers(0, 6, size=120).astype(float)  # many tied risks
    assert concordance_index(time, event, risk) == pytest.approx(_naive_c_index(time, event, risk))
    with pytest.raises(ValueError, match="lengths differ"):
        concordance_index(time, event, risk[:-1])


def test_cox_gradient_and_recovery():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(300, 3))
    true_beta = np.array([1.0, -0.5, 0.0])
    time = np.round(rng.exponential(np.exp(-x @ true_beta)), 1)  # rounding makes tied times
    event = rng.random(300) < 0.8
    sorted_data = _sorted_for_cox(x, time, event)
    beta0 = rng.normal(size=3)
    error = check_grad(
        lambda b: _cox_objective(b, *sorted_data, 0.1)[0],
        lambda b: _cox_objective(b, *sorted_data, 0.1)[1],
        beta0,
    )
    assert error < 1e-5
    beta = fit_cox_ridge(x, time, event, penalty=1e-4)
    assert np.allclose(beta, true_beta, atol=0.2)
    assert np.abs(fit_cox_ridge(x, time, event, penalty=100.0)).max() < 0.01  # heavy ridge shrinks to 0


def test_survival_protocol():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(150, 6))
    hazard = np.exp(1.5 * x[:, 0])
    event_time, censor_time = rng.exponential(1 / hazard), rng.exponential(2.0, size=150)
    survival = np.c_[np.minimum(event_time, censor_time), event_time <= censor_time]
    report = evaluate_embeddings(x, survival, task="survival")
    assert set(report.summary) == {"cox"} and report.class_names == []
    assert report.summary["cox"]["c_index"]["mean"] >= 0.7
    noise = evaluate_embeddings(rng.normal(size=(150, 6)), survival, task="survival")
    assert 0.35 <= noise.summary["cox"]["c_index"]["mean"] <= 0.65


def test_bad_input_is_named():
    x, labels = _two_classes(separation=1.0, n=20)
    with pytest.raises(ValueError, match="each class needs at least folds=5"):
        evaluate_embeddings(x[:12], labels[6:18])
    with pytest.raises(ValueError, match="20 embeddings but 19 labels"):
        evaluate_embeddings(x, labels[:-1])
    with pytest.raises(ValueError, match="task must be"):
        evaluate_embeddings(x, labels, task="regression")
    with pytest.raises(ValueError, match=r"\[S, 2\] \(time, event\)"):
        evaluate_embeddings(x, np.c_[np.ones(20), np.full(20, 2)], task="survival")
    with pytest.raises(ValueError, match="models must be among"):
        evaluate_embeddings(x, labels, models=("svm",))


def test_json_safe_replaces_undefined_values():
    assert json_safe({"a": float("nan"), "b": [np.float32(1.5), np.int64(2)], 3: (np.inf,)}) == {
        "a": None,
        "b": [1.5, 2],
        "3": [None],
    }
