"""Training of an AB-MIL head on slide labels.

Inputs: a CSV of slide labels (columns ``slide_id`` and ``label``; an optional ``split``
column with ``train``/``val``/``test``) and one bag of instance features per slide (20x
tile features, or mixed-magnification region embeddings). Without a split column the
slides are split per class (seeded). The head standardises each feature dimension with
the mean and std of the training bags' instances (kept in the checkpoint), so bags are
given raw. Training is one bag per step with Adam; the weights of
the epoch with the lowest validation loss are kept (early stopping with a patience).

Outputs in ``out_dir``:

``abmil.safetensors`` / ``abmil.json``  the trained head (:mod:`napari_care.core.checkpoint`;
                                        class names, encoder and metrics in its extra state)
``predictions.csv``  one row per slide: slide_id, split, label, predicted, prob_<class>...
``attention.npz``    attention per instance, ragged: ``slide_id`` [S], ``offsets`` [S+1],
                     ``attention`` [sum N] (read with :func:`load_attention`)
``metrics.json``     test AUROC and balanced accuracy, best epoch, split sizes
"""

from __future__ import annotations

import copy
import csv
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from napari_care.core.atomic import atomic_open
from napari_care.core.checkpoint import save_checkpoint
from napari_care.core.evaluate import classification_metrics, json_safe
from napari_care.core.models.abmil import ABMIL, ABMILConfig
from napari_care.core.progress import Progress, ProgressGen
from napari_care.core.train.mil_config import MILTrainConfig

SPLITS = ("train", "val", "test")


@dataclass
class MILTrainResult:
    """Outcome of :func:`train_mil`: the head (eval mode, best epoch), class names in the
    order of the logits, the metrics written to ``metrics.json``, and the output paths."""

    model: ABMIL
    class_names: list[str]
    metrics: dict
    checkpoint: Path
    predictions_csv: Path
    attention_npz: Path
    metrics_json: Path


def read_slide_labels(csv_path: str | Path) -> tuple[list[str], list[str], list[str] | None]:
    """Read ``slide_id``, ``label`` and (if present) ``split`` columns of a label CSV."""
    csv_path = Path(csv_path)
    with open(csv_path, newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.DictReader(handle))
    columns = set(rows[0]) if rows else set()
    if not {"slide_id", "label"} <= columns:
        raise ValueError(f"{csv_path}: needs columns 'slide_id' and 'label', found {sorted(columns)}")
    slide_ids = [row["slide_id"].strip() for row in rows]
    if len(set(slide_ids)) != len(slide_ids):
        raise ValueError(f"{csv_path}: slide_id values are not unique")
    labels = [row["label"].strip() for row in rows]
    if "split" not in columns:
        return slide_ids, labels, None
    splits = [
        {"validation": "val"}.get(row["split"].strip().lower(), row["split"].strip().lower()) for row in rows
    ]
    unknown = sorted(set(splits) - set(SPLITS))
    if unknown:
        raise ValueError(f"{csv_path}: split values must be train/val/test, found {unknown}")
    return slide_ids, labels, splits


def stratified_split(labels: np.ndarray, val_fraction: float, test_fraction: float, seed: int) -> np.ndarray:
    """``"train"``/``"val"``/``"test"`` per sample, drawn per class (seeded)."""
    rng = np.random.default_rng(seed)
    split = np.full(len(labels), "train", dtype=object)
    for value in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == value))
        n_test = round(test_fraction * len(members))
        n_val = round(val_fraction * len(members))
        if len(members) - n_test - n_val < 1:
            raise ValueError(f"class {value!r} has {len(members)} slides: too few for a train/val/test split")
        split[members[:n_test]] = "test"
        split[members[n_test : n_test + n_val]] = "val"
    return split.astype(str)


def _class_order(labels: list[str]) -> list[str]:
    names = sorted(set(labels))
    try:
        return sorted(names, key=float)  # "2" before "10" when labels are numbers
    except ValueError:
        return names


def _prepare_bags(slide_ids: list[str], bags: Mapping[str, object], csv_path: Path) -> list[torch.Tensor]:
    missing = [slide_id for slide_id in slide_ids if slide_id not in bags]
    if missing:
        raise ValueError(f"{csv_path}: {len(missing)} slides have no bag, e.g. {missing[:3]}")
    tensors = [torch.as_tensor(np.asarray(bags[slide_id], dtype=np.float32)) for slide_id in slide_ids]
    for slide_id, bag in zip(slide_ids, tensors, strict=True):
        if bag.dim() != 2 or len(bag) == 0:
            raise ValueError(f"bag of {slide_id} must be a non-empty [N, D] array, got {tuple(bag.shape)}")
    dims = {bag.shape[1] for bag in tensors}
    if len(dims) != 1:
        raise ValueError(f"bags have different feature dimensions: {sorted(dims)}")
    return tensors


@torch.no_grad()
def _predict(
    model: ABMIL, bags: list[torch.Tensor], device: torch.device
) -> tuple[np.ndarray, list[np.ndarray]]:
    model.eval()
    probabilities, attentions = [], []
    for bag in bags:
        logits, attention = model(bag.to(device))
        probabilities.append(torch.softmax(logits, dim=-1).cpu().numpy())
        attentions.append(attention.cpu().numpy().astype(np.float32))
    return np.stack(probabilities), attentions


def _write_outputs(out_dir: Path, slide_ids, splits, labels, class_names, probabilities, attentions):
    predictions_csv, attention_npz = out_dir / "predictions.csv", out_dir / "attention.npz"
    with atomic_open(predictions_csv, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["slide_id", "split", "label", "predicted"] + [f"prob_{name}" for name in class_names]
        )
        for slide_id, split, label, probs in zip(slide_ids, splits, labels, probabilities, strict=True):
            writer.writerow(
                [slide_id, split, class_names[label], class_names[int(np.argmax(probs))]]
                + [f"{p:.6f}" for p in probs]
            )
    offsets = np.cumsum([0] + [len(a) for a in attentions]).astype(np.int64)
    with atomic_open(attention_npz, "wb") as handle:
        np.savez(
            handle,
            slide_id=np.asarray(slide_ids, dtype=str),
            offsets=offsets,
            attention=np.concatenate(attentions),
        )
    return predictions_csv, attention_npz


def load_attention(npz_path: str | Path) -> dict[str, np.ndarray]:
    """Read ``attention.npz`` written by :func:`train_mil`: slide_id -> attention ``[N]``."""
    with np.load(npz_path) as data:
        offsets, attention = data["offsets"], data["attention"]
        return {
            str(slide_id): attention[offsets[i] : offsets[i + 1]]
            for i, slide_id in enumerate(data["slide_id"])
        }


def _train_epoch(
    model: ABMIL,
    optimizer: torch.optim.Optimizer,
    bags: list[torch.Tensor],
    labels: np.ndarray,
    class_weight: torch.Tensor | None,
    config: MILTrainConfig,
    epoch: int,
    device: torch.device,
) -> float:
    """One pass over the training bags in a seeded order; returns the mean loss."""
    seed = int(np.random.SeedSequence([config.seed, epoch]).generate_state(1)[0])
    generator = torch.Generator().manual_seed(seed)
    model.train()
    total = 0.0
    with torch.random.fork_rng(devices=[device] if device.type != "cpu" else []):
        torch.manual_seed(seed)  # dropout draws from the global generator
        for i in torch.randperm(len(bags), generator=generator).tolist():
            bag = bags[i]
            if config.max_instances is not None and len(bag) > config.max_instances:
                bag = bag[torch.randperm(len(bag), generator=generator)[: config.max_instances]]
            logits, _ = model(bag.to(device))
            target = torch.tensor([int(labels[i])], device=device)
            loss = F.cross_entropy(logits.unsqueeze(0), target, weight=class_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach())
    return total / len(bags)


def train_mil(
    labels_csv: str | Path,
    bags: Mapping[str, object],
    out_dir: str | Path,
    config: MILTrainConfig = MILTrainConfig(),
    *,
    encoder: str = "default",
) -> ProgressGen[MILTrainResult]:
    """Train an AB-MIL head; a generator of :class:`Progress` returning :class:`MILTrainResult`.

    Parameters
    ----------
    labels_csv
        CSV with ``slide_id``, ``label`` and optionally ``split`` (train/val/test).
    bags
        slide_id -> ``[N, D]`` instance features (numpy or torch), one D for all.
    out_dir
        Folder of the outputs (see the module docstring).
    config
        Training options.
    encoder
        Name of the patch encoder behind the bags (kept in the checkpoint).
    """
    labels_csv, out_dir = Path(labels_csv), Path(out_dir)
    slide_ids, label_names, splits = read_slide_labels(labels_csv)
    class_names = _class_order(label_names)
    if len(class_names) < 2:
        raise ValueError(f"{labels_csv}: needs at least two classes, found {class_names}")
    labels = np.array([class_names.index(name) for name in label_names])
    split_of = (
        np.array(splits)
        if splits is not None
        else stratified_split(labels, config.val_fraction, config.test_fraction, config.seed)
    )
    for split in SPLITS:
        if not (split_of == split).any():
            raise ValueError(f"{labels_csv}: no slide in the {split!r} split")
    all_bags = _prepare_bags(slide_ids, bags, labels_csv)
    index = {split: np.flatnonzero(split_of == split) for split in SPLITS}
    device = torch.device(config.device)
    model_config = ABMILConfig(
        all_bags[0].shape[1],
        config.hidden,
        config.attn_dim,
        len(class_names),
        config.dropout,
        config.split_at,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)  # initial weights from the run's seed, caller's RNG untouched
        model = ABMIL(model_config).to(device)
    # Standardisation is part of the head: statistics of the training instances only (no
    # validation or test slide leaks in), kept in the checkpoint and applied in forward.
    model.set_feature_stats(all_bags[i] for i in index["train"])
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    counts = np.bincount(labels[index["train"]], minlength=len(class_names)).astype(np.float32)
    class_weight = None
    if config.balance_classes:
        class_weight = torch.as_tensor(counts.sum() / np.maximum(counts, 1) / len(class_names)).to(device)
    best: tuple[float, int, dict | None] = (np.inf, -1, None)
    for epoch in range(config.max_epochs):
        train_loss = _train_epoch(
            model,
            optimizer,
            [all_bags[i] for i in index["train"]],
            labels[index["train"]],
            class_weight,
            config,
            epoch,
            device,
        )
        val_probs, _ = _predict(model, [all_bags[i] for i in index["val"]], device)
        val_true = val_probs[np.arange(len(val_probs)), labels[index["val"]]]
        val_loss = float(-np.mean(np.log(np.clip(val_true, 1e-12, None))))
        if val_loss < best[0]:
            best = (val_loss, epoch, copy.deepcopy(model.state_dict()))
        yield Progress(
            "mil",
            epoch + 1,
            config.max_epochs,
            f"epoch {epoch + 1}: train loss {train_loss:.4f}, val loss {val_loss:.4f}",
        )
        if epoch - best[1] >= config.patience:
            break
    if best[2] is None:
        raise RuntimeError("AB-MIL training diverged: the validation loss was never finite (try a lower lr)")
    model.load_state_dict(best[2])
    probabilities, attentions = _predict(model, all_bags, device)
    test = index["test"]
    test_metrics = classification_metrics(labels[test], probabilities[test])
    metrics = {
        "test_auroc": test_metrics["auroc"],
        "test_balanced_accuracy": test_metrics["balanced_accuracy"],
        "test_weighted_f1": test_metrics["weighted_f1"],
        "best_val_loss": best[0],
        "best_epoch": best[1] + 1,
        "epochs_run": epoch + 1,
        "class_names": class_names,
        "n_slides": {split: len(index[split]) for split in SPLITS},
        "encoder": encoder,
        "config": asdict(config),
    }
    yield Progress(
        "mil",
        epoch + 1,
        config.max_epochs,
        f"test AUROC {metrics['test_auroc']:.3f}, balanced accuracy {metrics['test_balanced_accuracy']:.3f}",
    )
    predictions_csv, attention_npz = _write_outputs(
        out_dir, slide_ids, split_of, labels, class_names, probabilities, attentions
    )
    metrics_json = out_dir / "metrics.json"
    with atomic_open(metrics_json, "w") as handle:
        json.dump(json_safe(metrics), handle, indent=2)
    checkpoint = save_checkpoint(
        out_dir / "abmil",
        model,
        model_config,
        extra_state=json_safe({"class_names": class_names, "encoder": encoder, "metrics": metrics}),
    )
    return MILTrainResult(
        model.eval(), class_names, metrics, checkpoint, predictions_csv, attention_npz, metrics_json
    )
