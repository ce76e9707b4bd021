"""Molecular profiles per slide and their encoders, for CARE Stage II (CLIP-style alignment).

Tables (CSV, or Parquet when pandas and a Parquet engine are installed) have one row per
slide; the key is the column ``slide_id``, or else the first column.

* **RNA** (:func:`load_rna_table`): every other column is a gene, the cells numbers (the
  paper: 3,999 Hallmark genes). :class:`RNAEncoder` standardises each gene with the
  training slides' mean and std (kept as buffers), cuts the vector into ``n_tokens``
  consecutive gene chunks, embeds each chunk linearly with a position embedding and runs
  a small transformer with a CLS token (chunk tokens are this project's choice: the paper
  names a transformer encoder but not its tokens; chunks keep it small for 4k genes).
* **Protein** (:func:`load_protein_table`): either numeric columns (one per protein, e.g.
  RPPA levels; the ``top_k`` highest of each row become its tokens, highest first) or
  text columns that already name each row's top proteins in order. Tokens index the
  table's protein vocabulary; :class:`ProteinEncoder` is an embedding table (protein +
  rank) averaged over the tokens (the paper: top-10 proteins, an embedding table).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from napari_care.core.train.care_stage2_config import PROTEIN_TOP_K

_EPS = 1e-6


@dataclass(frozen=True)
class RNATable:
    """Gene values per slide: ``values [S, G]`` float32 for ``slide_ids`` and ``gene_names``."""

    slide_ids: tuple[str, ...]
    values: np.ndarray
    gene_names: tuple[str, ...]

    def rows(self, slide_ids: list[str]) -> np.ndarray:
        """Values of the given slides, in that order."""
        index = {slide_id: row for row, slide_id in enumerate(self.slide_ids)}
        return self.values[[index[slide_id] for slide_id in slide_ids]]


@dataclass(frozen=True)
class ProteinTable:
    """Top proteins per slide: ``tokens [S, k]`` int64 ids into ``protein_names`` (-1: none)."""

    slide_ids: tuple[str, ...]
    tokens: np.ndarray
    protein_names: tuple[str, ...]

    def rows(self, slide_ids: list[str]) -> np.ndarray:
        """Tokens of the given slides, in that order."""
        index = {slide_id: row for row, slide_id in enumerate(self.slide_ids)}
        return self.tokens[[index[slide_id] for slide_id in slide_ids]]


MolecularTable = RNATable | ProteinTable


def _read_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a CSV or Parquet table, cells as strings."""
    if not path.is_file():
        raise FileNotFoundError(f"molecular table not found: {path}")
    if path.suffix.lower() in (".parquet", ".pq"):
        try:
            import pandas as pd  # pandas only for tables that need it

            frame = pd.read_parquet(path)
        except ImportError as error:
            raise ValueError(
                f"{path}: reading Parquet needs pandas and pyarrow ({error}); or save the table as CSV"
            ) from error
        return [str(c) for c in frame.columns], [
            ["" if v is None else str(v) for v in row] for row in frame.itertuples(index=False)
        ]
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        rows = [row for row in reader if any(cell.strip() for cell in row)]
    if not header:
        raise ValueError(f"{path}: empty table")
    return [cell.strip() for cell in header], rows


def _keyed(path: Path) -> tuple[list[str], list[str], list[list[str]]]:
    """Slide ids, the other column names and their cells; the key is ``slide_id`` or column 0."""
    header, rows = _read_rows(path)
    key = header.index("slide_id") if "slide_id" in header else 0
    if len(header) < 2 or not rows:
        raise ValueError(f"{path}: needs a slide_id column, at least one value column and one row")
    for number, row in enumerate(rows, start=2):
        if len(row) != len(header):
            raise ValueError(f"{path}: row {number} has {len(row)} cells, the header {len(header)}")
    slide_ids = [row[key].strip() for row in rows]
    if len(set(slide_ids)) != len(slide_ids) or "" in slide_ids:
        raise ValueError(f"{path}: slide ids (column {header[key]!r}) must be unique and non-empty")
    columns = [name for i, name in enumerate(header) if i != key]
    cells = [[cell.strip() for i, cell in enumerate(row) if i != key] for row in rows]
    return slide_ids, columns, cells


def _numbers(cells: list[list[str]], path: Path) -> np.ndarray | None:
    """The cells as float64 (empty or NA as NaN); None when some cell is text."""
    try:
        return np.array(
            [[float(c) if c not in ("", "NA", "NaN", "nan") else np.nan for c in row] for row in cells]
        )
    except ValueError:
        return None


def load_rna_table(path: str | Path, *, log1p: bool = False) -> RNATable:
    """Read gene values per slide (see the module docstring).

    Parameters
    ----------
    path
        CSV or Parquet table.
    log1p
        Apply ``log(1 + x)`` (for raw counts or TPM; leave off for values already logged).

    Raises
    ------
    ValueError
        When a cell is not a number, or a gene is missing for every slide.
    """
    path = Path(path)
    slide_ids, genes, cells = _keyed(path)
    values = _numbers(cells, path)
    if values is None:
        raise ValueError(f"{path}: RNA values must all be numbers")
    if log1p:
        if np.nanmin(values) < 0:
            raise ValueError(f"{path}: log1p needs non-negative values")
        values = np.log1p(values)
    empty = np.isnan(values).all(axis=0)
    if empty.any():
        examples = [g for g, e in zip(genes, empty, strict=False) if e][:3]
        raise ValueError(f"{path}: genes without any value, e.g. {examples}")
    # A missing value becomes the gene's mean, i.e. 0 after standardisation.
    values = np.where(np.isnan(values), np.nanmean(values, axis=0), values)
    return RNATable(tuple(slide_ids), values.astype(np.float32), tuple(genes))


def load_protein_table(path: str | Path, *, top_k: int = PROTEIN_TOP_K) -> ProteinTable:
    """Read the top proteins per slide (see the module docstring).

    Parameters
    ----------
    path
        CSV or Parquet table: numeric protein columns, or text columns naming proteins.
    top_k
        Tokens per slide (paper: 10).
    """
    path = Path(path)
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    slide_ids, columns, cells = _keyed(path)
    values = _numbers(cells, path)
    if values is not None:
        names = tuple(columns)
        ranked = np.argsort(-np.nan_to_num(values, nan=-np.inf), axis=1, kind="stable")[:, :top_k]
        present = np.isfinite(np.take_along_axis(values, ranked, axis=1))
        tokens = np.where(present, ranked, -1)
    else:
        names = tuple(sorted({cell for row in cells for cell in row if cell}))
        index = {name: number for number, name in enumerate(names)}
        tokens = np.full((len(cells), top_k), -1, dtype=np.int64)
        for row, row_cells in enumerate(cells):
            named = [index[cell] for cell in row_cells if cell][:top_k]
            tokens[row, : len(named)] = named
    if tokens.shape[1] < top_k:
        tokens = np.pad(tokens, ((0, 0), (0, top_k - tokens.shape[1])), constant_values=-1)
    if (tokens[:, 0] < 0).any():
        raise ValueError(f"{path}: some slides name no protein")
    return ProteinTable(tuple(slide_ids), tokens.astype(np.int64), names)


@dataclass(frozen=True)
class RNAEncoderConfig:
    """Sizes of :class:`RNAEncoder` (small by default; this project's choices).

    Parameters
    ----------
    in_dim
        Number of genes G.
    n_tokens
        Gene chunks (tokens) the vector is cut into.
    dim, depth, heads, mlp_ratio, dropout
        Transformer width, layers, heads, MLP width / dim, dropout.
    out_dim
        Output (alignment space) width.
    """

    in_dim: int
    n_tokens: int = 32
    dim: int = 128
    depth: int = 2
    heads: int = 4
    mlp_ratio: float = 2.0
    dropout: float = 0.1
    out_dim: int = 128

    def __post_init__(self) -> None:
        if min(self.in_dim, self.n_tokens, self.dim, self.depth, self.heads, self.out_dim) < 1:
            raise ValueError(f"RNAEncoderConfig sizes must be positive: {self}")
        if self.dim % self.heads:
            raise ValueError(f"RNAEncoderConfig.dim ({self.dim}) must be a multiple of heads ({self.heads})")


class RNAEncoder(nn.Module):
    """Gene values ``[B, G]`` -> ``[B, out_dim]`` (see the module docstring)."""

    config_cls = RNAEncoderConfig

    def __init__(self, config: RNAEncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.chunk = math.ceil(config.in_dim / config.n_tokens)
        self.register_buffer("gene_mean", torch.zeros(config.in_dim))
        self.register_buffer("gene_std", torch.ones(config.in_dim))
        self.embed = nn.Linear(self.chunk, config.dim)
        self.position = nn.Parameter(torch.randn(1, config.n_tokens + 1, config.dim) * 0.02)
        self.cls_token = nn.Parameter(torch.randn(1, 1, config.dim) * 0.02)
        layer = nn.TransformerEncoderLayer(
            config.dim,
            config.heads,
            int(config.dim * config.mlp_ratio),
            config.dropout,
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, config.depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(config.dim)
        self.out = nn.Linear(config.dim, config.out_dim)

    def fit_standardisation(self, values: np.ndarray) -> None:
        """Set the per-gene mean and std from the training slides' ``[S, G]`` values."""
        values = np.asarray(values, dtype=np.float64)
        self.gene_mean.copy_(torch.as_tensor(values.mean(axis=0)))
        self.gene_std.copy_(torch.as_tensor(np.maximum(values.std(axis=0), _EPS)))

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        """``[B, G]`` gene values -> ``[B, out_dim]``."""
        if values.dim() != 2 or values.shape[1] != self.config.in_dim:
            raise ValueError(
                f"RNAEncoder expects [B, {self.config.in_dim}] gene values, got {tuple(values.shape)}"
            )
        x = (values - self.gene_mean) / self.gene_std
        x = nn.functional.pad(x, (0, self.chunk * self.config.n_tokens - x.shape[1]))
        tokens = self.embed(x.view(len(x), self.config.n_tokens, self.chunk))
        tokens = torch.cat([self.cls_token.expand(len(x), -1, -1), tokens], dim=1) + self.position
        return self.out(self.norm(self.encoder(tokens)[:, 0]))


@dataclass(frozen=True)
class ProteinEncoderConfig:
    """Sizes of :class:`ProteinEncoder`.

    Parameters
    ----------
    in_dim
        Protein vocabulary size.
    top_k
        Tokens per slide.
    dim, out_dim
        Embedding width and output (alignment space) width.
    """

    in_dim: int
    top_k: int = 10
    dim: int = 128
    out_dim: int = 128

    def __post_init__(self) -> None:
        if min(self.in_dim, self.top_k, self.dim, self.out_dim) < 1:
            raise ValueError(f"ProteinEncoderConfig sizes must be positive: {self}")


class ProteinEncoder(nn.Module):
    """Top-k protein tokens ``[B, k]`` (-1 for none) -> ``[B, out_dim]``: mean of
    protein + rank embeddings, layer norm, linear map."""

    config_cls = ProteinEncoderConfig

    def __init__(self, config: ProteinEncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.protein = nn.Embedding(config.in_dim, config.dim)
        self.rank = nn.Embedding(config.top_k, config.dim)
        self.norm = nn.LayerNorm(config.dim)
        self.out = nn.Linear(config.dim, config.out_dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[B, k]`` long token ids -> ``[B, out_dim]``."""
        if tokens.dim() != 2 or tokens.shape[1] != self.config.top_k:
            raise ValueError(
                f"ProteinEncoder expects [B, {self.config.top_k}] tokens, got {tuple(tokens.shape)}"
            )
        present = (tokens >= 0).to(self.rank.weight.dtype)
        embedded = self.protein(tokens.clamp_min(0)) + self.rank.weight
        pooled = (embedded * present[..., None]).sum(1) / present.sum(1, keepdim=True).clamp_min(1.0)
        return self.out(self.norm(pooled))


def molecular_encoder(table: MolecularTable, *, out_dim: int = 128, dim: int = 128) -> nn.Module:
    """A new encoder that fits a table (RNA: standardised with the table's values)."""
    if isinstance(table, RNATable):
        encoder = RNAEncoder(RNAEncoderConfig(len(table.gene_names), dim=dim, out_dim=out_dim))
        encoder.fit_standardisation(table.values)
        return encoder
    return ProteinEncoder(ProteinEncoderConfig(len(table.protein_names), table.tokens.shape[1], dim, out_dim))


def molecular_inputs(table: MolecularTable, slide_ids: list[str]) -> torch.Tensor:
    """The encoder input of the given slides: float gene values or long protein tokens."""
    return torch.from_numpy(table.rows(slide_ids))
