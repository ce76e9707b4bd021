"""The CARE paper's evaluation protocol for frozen slide (or ROI) embeddings.

Follows the authors' code (GitHub ``zdipath/CARE``, ``utils/core_utils.py``):

* **Folds.** The samples are cut into ``folds`` stratified parts (seeded). Fold ``i``
  tests on part ``i``, validates on part ``i + 1`` and trains on the rest: with 5 folds
  about 60/20/20, and every sample is tested exactly once.
* **Logistic regression** (lbfgs, ``max_iter=1000``, no feature scaling, as the authors)
  with C swept over 45 log-spaced values from 1e-6 to 1e5; the C with the lowest
  validation log-loss wins (ties: the stronger regularisation).
* **kNN** (standardised features, Euclidean) with k in {3, 5, ..., 19, 23} and uniform or
  distance weights; the pair with the highest validation balanced accuracy wins.
* **Metrics** on the test part: balanced accuracy, AUROC (binary; macro one-vs-rest for
  several classes, where the authors' code has one-vs-one but reports weighted F1) and
  weighted F1; Harrell's C-index for survival.
* **Survival** (this project's choice; the paper gives no detail): a ridge-penalised Cox
  model (Breslow partial likelihood on standardised features, fitted with L-BFGS; the
  same model as lifelines' ``CoxPHFitter(penalizer=p, l1_ratio=0)`` up to the handling
  of tied times), with the penalty chosen by validation partial log-likelihood. Own code
  keeps the results independent of which optional packages are installed.

Means and standard deviations over folds use ``ddof=0`` and ignore undefined values (an
AUROC on a test part with a single class).
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.optimize import minimize
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, f1_score, log_loss, roc_auc_score
from sklearn.model_selection import StratifiedKFold
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from napari_care.core.atomic import atomic_open

LOGREG_C_GRID = np.logspace(-6, 5, 45)
KNN_K_GRID = (3, 5, 7, 9, 11, 13, 15, 17, 19, 23)
KNN_WEIGHTS = ("uniform", "distance")
COX_PENALTY_GRID = np.logspace(2, -4, 13)  # strongest first: ties keep the simpler model
CLASSIFICATION_MODELS = ("logistic", "knn")
SURVIVAL_MODELS = ("cox",)


@dataclass
class FoldResult:
    """One fold: sizes, test metrics per model and the hyper-parameters each model chose."""

    fold: int
    n_train: int
    n_val: int
    n_test: int
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    chosen: dict[str, dict[str, float | int | str]] = field(default_factory=dict)


@dataclass
class EvalReport:
    """Result of :func:`evaluate_embeddings`.

    Attributes
    ----------
    task
        ``"classification"`` or ``"survival"``.
    n_samples, folds, seed
        The protocol's data size and settings.
    class_names
        The labels, in the order of the probability columns (empty for survival).
    per_fold
        One :class:`FoldResult` per fold.
    summary
        ``summary[model][metric] = {"mean": ..., "std": ...}`` over folds.
    """

    task: str
    n_samples: int
    folds: int
    seed: int
    class_names: list[str]
    per_fold: list[FoldResult]
    summary: dict[str, dict[str, dict[str, float]]]

    def to_dict(self) -> dict:
        """Plain dict (JSON-able once NaN are replaced)."""
        return dataclasses.asdict(self)

    def write_report(self, path: str | Path) -> Path:
        """Write the report as JSON atomically (undefined values as ``null``); returns the path."""
        path = Path(path)
        with atomic_open(path, "w") as handle:
            json.dump(json_safe(self.to_dict()), handle, indent=2)
        return path


def json_safe(value):
    """Replace NaN/inf by None and numpy scalars by Python numbers, recursively."""
    if isinstance(value, dict):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def fold_indices(
    strata: np.ndarray, folds: int = 5, seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Stratified (train, val, test) index arrays: test part ``i``, validation part ``i+1``."""
    if folds < 3:
        raise ValueError(f"folds must be at least 3 (train, validation, test), got {folds}")
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    parts = [test for _, test in splitter.split(np.zeros(len(strata)), strata)]
    result = []
    for fold in range(folds):
        test, val = parts[fold], parts[(fold + 1) % folds]
        train = np.sort(
            np.concatenate([parts[i] for i in range(folds) if i not in (fold, (fold + 1) % folds)])
        )
        result.append((train, val, test))
    return result


def classification_metrics(labels: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    """Balanced accuracy, AUROC and weighted F1 of class probabilities ``[S, C]``.

    The prediction is the most probable class. AUROC is NaN when the labels hold a single
    class (binary) or miss a class (several classes).
    """
    labels = np.asarray(labels)
    predicted = np.argmax(proba, axis=1)
    n_classes = proba.shape[1]
    try:
        if n_classes == 2:
            auroc = roc_auc_score(labels, proba[:, 1])
        else:
            auroc = roc_auc_score(
                labels, proba, multi_class="ovr", average="macro", labels=np.arange(n_classes)
            )
    except ValueError:
        auroc = float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "y_pred contains classes not in y_true" on small parts
        balanced = balanced_accuracy_score(labels, predicted)
    return {
        "balanced_accuracy": float(balanced),
        "auroc": float(auroc),
        "weighted_f1": float(f1_score(labels, predicted, average="weighted", zero_division=0)),
    }


def concordance_index(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> float:
    """Harrell's C-index of a risk score (higher risk = shorter survival).

    A pair (i, j) is comparable when i had the event and ``time_i < time_j``, or
    ``time_i == time_j`` and j is censored (the event counts as earlier). It is concordant
    when ``risk_i > risk_j``; tied risks count one half. Pairs of two events at the same
    time are not comparable (as lifelines).

    Raises
    ------
    ValueError
        On arrays of different lengths, non-finite values, or no comparable pair.
    """
    time = np.asarray(time, dtype=np.float64).ravel()
    event = np.asarray(event).astype(bool).ravel()
    risk = np.asarray(risk, dtype=np.float64).ravel()
    if not len(time) == len(event) == len(risk):
        raise ValueError(
            f"concordance_index: lengths differ (time {len(time)}, event {len(event)}, risk {len(risk)})"
        )
    if not (np.isfinite(time).all() and np.isfinite(risk).all()):
        raise ValueError("concordance_index: time and risk must be finite")
    comparable = concordant = 0.0
    chunk = max(1, 2**22 // max(1, len(time)))  # bounds the [chunk, S] pair matrices
    for start in range(0, len(time), chunk):
        t_i, e_i, r_i = (a[start : start + chunk, None] for a in (time, event, risk))
        pairs = e_i & ((t_i < time) | ((t_i == time) & ~event))
        comparable += pairs.sum()
        concordant += (pairs & (r_i > risk)).sum() + 0.5 * (pairs & (r_i == risk)).sum()
    if comparable == 0:
        raise ValueError("concordance_index: no comparable pair (no event before another time)")
    return float(concordant / comparable)


def _cox_objective(beta, x_sorted, event_sorted, last_of_tie, penalty):
    """Penalised negative Breslow log partial likelihood per event, and its gradient."""
    eta = x_sorted @ beta
    shift = eta.max()
    weight = np.exp(eta - shift)
    risk_sum = np.cumsum(weight)[last_of_tie]  # sum over t_j >= t_i
    weighted_x = np.cumsum(weight[:, None] * x_sorted, axis=0)[last_of_tie]
    n_events = max(1, event_sorted.sum())
    log_lik = np.sum((eta - np.log(risk_sum) - shift)[event_sorted])
    grad = np.sum((x_sorted - weighted_x / risk_sum[:, None])[event_sorted], axis=0)
    value = -log_lik / n_events + 0.5 * penalty * beta @ beta
    return value, -grad / n_events + penalty * beta


def _sorted_for_cox(x, time, event):
    order = np.argsort(-time, kind="stable")
    descending = time[order]
    last_of_tie = np.searchsorted(-descending, -descending, side="right") - 1
    return x[order], event[order].astype(bool), last_of_tie


def fit_cox_ridge(x: np.ndarray, time: np.ndarray, event: np.ndarray, penalty: float) -> np.ndarray:
    """Coefficients ``[E]`` of a ridge-penalised Cox model (risk = ``x @ beta``).

    Minimises ``-logPL / n_events + penalty / 2 * ||beta||^2`` (Breslow ties) with L-BFGS.
    """
    x_sorted, event_sorted, last_of_tie = _sorted_for_cox(np.asarray(x, dtype=np.float64), time, event)
    result = minimize(
        _cox_objective,
        np.zeros(x.shape[1]),
        args=(x_sorted, event_sorted, last_of_tie, penalty),
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": 1000},
    )
    return result.x


def _fit_logistic(x_train, y_train, x_val, y_val, n_classes):
    models, losses = [], []
    for c in LOGREG_C_GRID:
        model = LogisticRegression(C=c, solver="lbfgs", max_iter=1000, random_state=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(x_train, y_train)
        models.append(model)
        losses.append(log_loss(y_val, model.predict_proba(x_val), labels=np.arange(n_classes)))
    best = int(np.argmin(losses))  # first minimum: the smallest C, i.e. the strongest regularisation
    return models[best], {"C": float(LOGREG_C_GRID[best]), "val_log_loss": float(losses[best])}


def _fit_knn(x_train, y_train, x_val, y_val):
    grid = [(k, weights) for k in KNN_K_GRID if k <= len(x_train) for weights in KNN_WEIGHTS]
    if not grid:
        raise ValueError(f"kNN needs at least {KNN_K_GRID[0]} training samples, got {len(x_train)}")
    models, scores = [], []
    for k, weights in grid:
        model = make_pipeline(StandardScaler(), KNeighborsClassifier(n_neighbors=k, weights=weights))
        models.append(model.fit(x_train, y_train))
        scores.append(balanced_accuracy_score(y_val, model.predict(x_val)))
    best = int(np.argmax(scores))  # first maximum: the smallest k
    k, weights = grid[best]
    return models[best], {"k": k, "weights": weights, "val_balanced_accuracy": float(scores[best])}


def _fit_cox(x_train, surv_train, x_val, surv_val):
    mean, std = x_train.mean(axis=0), x_train.std(axis=0)
    std[std == 0] = 1.0
    x_train, x_val = (x_train - mean) / std, (x_val - mean) / std
    x_val_sorted, event_val_sorted, last_of_tie = _sorted_for_cox(x_val, surv_val[:, 0], surv_val[:, 1])
    betas = [
        fit_cox_ridge(x_train, surv_train[:, 0], surv_train[:, 1], penalty) for penalty in COX_PENALTY_GRID
    ]
    losses = [_cox_objective(beta, x_val_sorted, event_val_sorted, last_of_tie, 0.0)[0] for beta in betas]
    best = int(np.argmin(losses))  # first minimum: the strongest penalty
    beta = betas[best]
    return (lambda x: ((x - mean) / std) @ beta), {
        "penalty": float(COX_PENALTY_GRID[best]),
        "val_neg_log_pl": float(losses[best]),
    }


def _check_inputs(embeddings, labels, task):
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2 or not np.isfinite(x).all():
        raise ValueError(f"embeddings must be a finite [S, E] array, got shape {x.shape}")
    if task == "classification":
        labels = np.asarray(labels).ravel()
    elif task == "survival":
        labels = np.asarray(labels, dtype=np.float64)
        if labels.ndim != 2 or labels.shape[1] != 2 or not set(np.unique(labels[:, 1])) <= {0.0, 1.0}:
            raise ValueError("survival labels must be [S, 2] (time, event) with event 0 or 1")
    else:
        raise ValueError(f"task must be 'classification' or 'survival', got {task!r}")
    if len(labels) != len(x):
        raise ValueError(f"{len(x)} embeddings but {len(labels)} labels")
    return x, labels


def evaluate_embeddings(
    embeddings: np.ndarray,
    labels: np.ndarray,
    *,
    task: str = "classification",
    folds: int = 5,
    seed: int = 0,
    models: Sequence[str] | None = None,
) -> EvalReport:
    """Run the paper's protocol on frozen embeddings.

    Parameters
    ----------
    embeddings
        ``[S, E]`` one embedding per slide (or ROI).
    labels
        Classification: ``[S]`` class labels of any type. Survival: ``[S, 2]`` with the time
        (any unit) and the event indicator (1 = event observed, 0 = censored).
    task
        ``"classification"`` or ``"survival"``.
    folds
        Number of folds (at least 3); each class (or event status) needs that many samples.
    seed
        Seed of the fold split.
    models
        Subset of ``("logistic", "knn")`` for classification; survival always uses ``"cox"``.

    Returns
    -------
    EvalReport
    """
    x, labels = _check_inputs(embeddings, labels, task)
    if task == "classification":
        class_names, y = np.unique(labels, return_inverse=True)
        models = tuple(models or CLASSIFICATION_MODELS)
        if not set(models) <= set(CLASSIFICATION_MODELS):
            raise ValueError(f"models must be among {CLASSIFICATION_MODELS}, got {models}")
        strata = y
    else:
        class_names, y, models, strata = np.array([]), None, SURVIVAL_MODELS, labels[:, 1].astype(int)
    values, counts = np.unique(strata, return_counts=True)
    if len(values) < 2 or counts.min() < folds:
        what = "class" if task == "classification" else "event status"
        raise ValueError(
            f"labels: each {what} needs at least folds={folds} samples and there must be two; "
            f"counts {dict(zip(values.tolist(), counts.tolist(), strict=True))}"
        )
    # Hundreds of tiny fits: thread start-up in BLAS/OpenMP costs more than it saves (the
    # authors' code limits threads too); one thread is ~10x faster on small data.
    with threadpool_limits(limits=1):
        per_fold = [
            _evaluate_fold(fold, split, x, labels, y, len(class_names), models)
            for fold, split in enumerate(fold_indices(strata, folds, seed))
        ]
    summary = {
        name: {
            metric: _mean_std([fold.metrics[name][metric] for fold in per_fold])
            for metric in per_fold[0].metrics[name]
        }
        for name in models
    }
    return EvalReport(task, len(x), folds, seed, [str(name) for name in class_names], per_fold, summary)


def _evaluate_fold(fold, split, x, labels, y, n_classes, models) -> FoldResult:
    train, val, test = split
    result = FoldResult(fold, len(train), len(val), len(test))
    for name in models:
        if name == "cox":
            risk_of, chosen = _fit_cox(x[train], labels[train], x[val], labels[val])
            try:
                metrics = {"c_index": concordance_index(labels[test, 0], labels[test, 1], risk_of(x[test]))}
            except ValueError:  # a test part without a comparable pair
                metrics = {"c_index": float("nan")}
        elif name == "logistic":
            model, chosen = _fit_logistic(x[train], y[train], x[val], y[val], n_classes)
            metrics = classification_metrics(y[test], model.predict_proba(x[test]))
        else:
            model, chosen = _fit_knn(x[train], y[train], x[val], y[val])
            metrics = classification_metrics(y[test], model.predict_proba(x[test]))
        result.metrics[name], result.chosen[name] = metrics, chosen
    return result


def _mean_std(values: list[float]) -> dict[str, float]:
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if not len(finite):
        return {"mean": float("nan"), "std": float("nan")}
    return {"mean": float(finite.mean()), "std": float(finite.std())}
