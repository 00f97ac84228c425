"""GM-LoRA's "gradients of the selected directions only": a LoRA branch whose backward computes ∂A and ∂B for the
r̂ selected directions, timed against PEFT's autograd path followed by grad-mode masking (`rmlora bench --selective`).

Experimental: no training path uses SelectiveLoraBranch; it measures what the selection could save per step.
"""

from __future__ import annotations

import statistics

import torch
from torch import nn

from rmlora.bench.timing import median_us


class SelectiveLoraBranch(torch.autograd.Function):
    """y = scaling · (x Aᵀ) Bᵀ, whose backward computes only A's rows and B's columns in `idx`.

    The other rows/columns get exact zeros, which is what grad-mode masking leaves in them. The input
    gradient still needs every direction (h = ∂y·B is T x R either way), so only ∂A and ∂B shrink:
    2·T·r̂·(d_in + d_out) FLOPs instead of 2·T·R·(d_in + d_out). With idx = all R directions it is the
    same computation as autograd's, so timing it at R and at r̂ isolates what the selection saves.
    """

    @staticmethod
    def forward(ctx, x, A, B, idx, scaling):
        u = x @ A.t()
        ctx.save_for_backward(x, A, B, u, idx)
        ctx.scaling = scaling
        return (u @ B.t()) * scaling

    @staticmethod
    def backward(ctx, gy):
        x, A, B, u, idx = ctx.saved_tensors
        x2, u2 = x.reshape(-1, x.shape[-1]), u.reshape(-1, u.shape[-1])
        gy2 = gy.reshape(-1, gy.shape[-1]) * ctx.scaling
        h = gy2 @ B  # T x R
        gx = (h @ A).reshape(x.shape)
        # (r̂ x T)(T x d) products: on CPU, torch's mm runs the transposed form (d x T)(T x r̂) several
        # times slower for r̂ this small (see docs/PERFORMANCE.md)
        gA = torch.zeros_like(A)
        gA[idx] = h[:, idx].t() @ x2
        gB = torch.zeros_like(B)
        gB[:, idx] = (u2[:, idx].t() @ gy2).t()
        return gx, gA, gB, None, None


def lora_branch(x, A, B, scaling):
    """PEFT's LoRA branch, lora_B(lora_A(x)) · scaling, differentiated by autograd (the simple path)."""
    return nn.functional.linear(nn.functional.linear(x, A), B) * scaling


def selective_backward_time(
    tokens: int, d_in: int, d_out: int, rank: int, r_hat: int, device: str = "cpu", iters: int = 20
) -> dict:
    """Median µs of one LoRA branch's backward three ways, interleaved call by call:

    autograd: PEFT's path (autograd of two linears) followed by grad-mode masking of ∂A, ∂B;
    all_R:    SelectiveLoraBranch with every direction selected (the same products as autograd);
    r_hat:    SelectiveLoraBranch with r̂ directions: all_R − r_hat is what the selection saves.
    Each includes the forward, whose time (measured alone) is subtracted.
    """
    g = torch.Generator().manual_seed(0)
    x = torch.randn(tokens, d_in, generator=g).to(device).requires_grad_(True)
    A = torch.randn(rank, d_in, generator=g).to(device).requires_grad_(True)
    B = torch.randn(d_out, rank, generator=g).to(device).requires_grad_(True)
    gy = torch.randn(tokens, d_out, generator=g).to(device)
    idx = torch.randperm(rank, generator=g)[:r_hat].sort().values.to(device)
    every = torch.arange(rank, device=device)
    mask = torch.zeros(rank, device=device)
    mask[idx] = 1

    def autograd_then_mask():
        y = lora_branch(x, A, B, 2.0)
        _, gA, gB = torch.autograd.grad(y, (x, A, B), gy)
        gA.mul_(mask[:, None])
        gB.mul_(mask[None, :])

    def selective(which):
        return lambda: torch.autograd.grad(SelectiveLoraBranch.apply(x, A, B, which, 2.0), (x, A, B), gy)

    def forward_only():
        with torch.no_grad():
            lora_branch(x, A, B, 2.0)

    fns = {"autograd": autograd_then_mask, "all_R": selective(every), "r_hat": selective(idx)}
    for fn in list(fns.values()) + [forward_only]:
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(iters):
        for k, fn in fns.items():
            times[k].append(median_us(fn, 1, device))
    fwd = median_us(forward_only, iters, device)
    us = {k: statistics.median(v) - fwd for k, v in times.items()}
    return {
        "tokens": tokens,
        "d_in": d_in,
        "d_out": d_out,
        "R": rank,
        "r_hat": r_hat,
        "autograd_backward_us": us["autograd"],
        "all_directions_backward_us": us["all_R"],
        "selected_backward_us": us["r_hat"],
        "saving_us": us["all_R"] - us["r_hat"],
    }


def selective_backward_report(groups, tokens: int, rank: int, r_hat: int, device: str, step_s: float) -> dict:
    rows = []
    for count, d_in, d_out in groups:
        r = selective_backward_time(tokens, d_in, d_out, rank, r_hat, device)
        r["pairs"] = count
        rows.append(r)

    def per_step(key):
        return sum(r[key] * r["pairs"] for r in rows)

    return {
        "shapes": rows,
        "autograd_backward_us_per_step": per_step("autograd_backward_us"),
        "all_directions_backward_us_per_step": per_step("all_directions_backward_us"),
        "saving_us_per_step": per_step("saving_us"),
        "peft_lora_step_s": step_s,
        "saving_share_of_peft_lora_step": per_step("saving_us") * 1e-6 / step_s,
    }
