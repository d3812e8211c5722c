"""Projection of each stored layer to a smaller width: a PCA basis fitted on a sample of the training split,
kept in the store (`projection/L<k>/mean` (D,), `projection/L<k>/basis` (D, N)) so that every row of every
split, the label-name features and a head's predictions go through the same map: y = (x - mean) @ basis."""
from __future__ import annotations

import numpy as np

SAMPLE_TOKENS = 65536  # rows fitted per layer: a few times D for a stable covariance at D = 1536


def array_names(layer: int) -> tuple[str, str]:
    return f"projection/L{layer}/mean", f"projection/L{layer}/basis"


def sample_rows(lengths: np.ndarray, budget: int = SAMPLE_TOKENS) -> np.ndarray:
    """Examples (input rows) evenly spread over a split until `budget` tokens: deterministic, so a resumed or
    distributed run fits the same basis."""
    n = len(lengths)
    if int(lengths.sum()) <= budget:
        return np.arange(n)
    k = max(1, int(n * budget / max(int(lengths.sum()), 1)))
    return np.unique(np.linspace(0, n - 1, k).round().astype(np.int64))


def fit_pca(rows: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(R, D) rows -> (mean (D,), basis (D, width)): the top principal directions, each signed so that its
    largest component is positive (eigenvectors have no sign of their own; this makes the basis reproducible)."""
    x = np.asarray(rows, dtype=np.float64)  # (R, D)
    mean = x.mean(axis=0)
    xc = x - mean
    cov = xc.T @ xc / max(len(x) - 1, 1)  # (D, D)
    vals, vecs = np.linalg.eigh(cov)  # ascending
    basis = vecs[:, np.argsort(vals)[::-1][:width]]  # (D, N)
    signs = np.sign(basis[np.abs(basis).argmax(axis=0), np.arange(basis.shape[1])])
    basis = basis * np.where(signs == 0, 1.0, signs)
    return mean.astype(np.float32), np.ascontiguousarray(basis, dtype=np.float32)


def project(rows: np.ndarray, mean: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """(R, D) -> (R, N) float32."""
    return ((np.asarray(rows, dtype=np.float32) - mean) @ basis).astype(np.float32)


def explained(rows: np.ndarray, mean: np.ndarray, basis: np.ndarray) -> float:
    """Fraction of the rows' variance (about `mean`) the basis keeps."""
    xc = np.asarray(rows, dtype=np.float64) - mean
    total = float((xc * xc).sum())
    kept = xc @ basis.astype(np.float64)
    return float((kept * kept).sum()) / total if total > 0 else 1.0
