"""Spectrum helpers shared by the ΔW diagnostics, the rank budget and the synthetic experiment.

The spectrum is computed through the factors: with thin QRs Aᵀ = Q_a R_a and B = Q_b R_b,
ΔW = s · Q_b (R_b R_aᵀ) Q_aᵀ, so ΔW's nonzero singular values are those of the R x R core s·R_b R_aᵀ:
O((d_in + d_out)·R²) work and no d_out x d_in SVD. Everything runs in float64.
"""

from __future__ import annotations

import math

import numpy as np
import torch

FLOAT32_EPS = float(np.finfo(np.float32).eps)


def delta_singular_values(A: torch.Tensor, B: torch.Tensor, scaling: float) -> torch.Tensor:
    """Singular values of ΔW = scaling · B A (descending, float64), via QR of the factors."""
    a = A.detach().reshape(A.shape[0], -1).to(torch.float64).cpu()
    b = B.detach().reshape(B.shape[0], -1).to(torch.float64).cpu()
    _, r_a = torch.linalg.qr(a.T)  # Aᵀ = Q_a R_a, R_a: k_a x R
    _, r_b = torch.linalg.qr(b)  # B = Q_b R_b,   R_b: k_b x R
    return torch.linalg.svdvals(scaling * (r_b @ r_a.T))


def numerical_rank(singular_values: torch.Tensor, shape: tuple[int, int], rtol: float | None = None) -> int:
    if singular_values.numel() == 0:
        return 0
    smax = float(singular_values.max())
    if smax == 0.0:
        return 0
    rtol = max(shape) * FLOAT32_EPS if rtol is None else rtol
    return int((singular_values > smax * rtol).sum())


def orthogonality_loss(singular_values: torch.Tensor, d_out: int) -> float:
    """‖ΔWΔWᵀ − I_{d_out}‖²_F from ΔW's singular values."""
    s2 = singular_values.to(torch.float64) ** 2
    return float(((s2 - 1.0) ** 2).sum()) + float(d_out - singular_values.numel())


def effective_rank(singular_values: torch.Tensor) -> float:
    total = float(singular_values.sum())
    if total == 0.0:
        return 0.0
    p = singular_values[singular_values > 0] / total
    return float(math.exp(float(-(p * p.log()).sum())))


def stable_rank(singular_values: torch.Tensor) -> float:
    smax = float(singular_values.max()) if singular_values.numel() else 0.0
    return 0.0 if smax == 0.0 else float((singular_values**2).sum()) / smax**2


def gram_penalty(m: torch.Tensor, rows: bool) -> float:
    m = m.to(torch.float64)
    g = m @ m.T if rows else m.T @ m
    return float(((g - torch.eye(g.shape[0], dtype=g.dtype)) ** 2).sum())
