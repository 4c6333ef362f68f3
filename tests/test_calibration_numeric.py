"""Numbers of the calibration kernels (torchprune_share.calibration): sweeps, refits, Hessians.

The column sweeps are checked against the textbook unblocked OBQ/GPTQ recurrence written
here with the full inverse Hessian in float64, and the refits against a least-squares
solve of the stacked problem, so any error in the blocking, the Cholesky formulation or
the normal equations shows up as a different code or value.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from torchprune_share.calibration.hessian import HessianAccumulator, inverse_cholesky
from torchprune_share.calibration.matrix import (
    Statistics,
    dense_target,
    prune_matrix,
    share_matrix,
)
from torchprune_share.calibration.refit import refit_codebook, sort_codebook
from torchprune_share.calibration.sweep import (
    codebook_sweep,
    lookup,
    nearest_codes,
    output_error,
    prune_sweep,
    quotas,
)

F64 = torch.float64


def _correlated_inputs(n: int, d: int, seed: int, dtype=torch.float32) -> torch.Tensor:
    """Rows ``z @ A``: correlated columns, a few of them at a large scale."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=F64)
    a[:, : max(1, d // 4)] *= 8.0
    x = torch.randn(n, d, generator=g, dtype=F64) @ a
    return x.to(dtype)


def _hessian(n: int, d: int, seed: int) -> torch.Tensor:
    x = _correlated_inputs(n, d, seed, F64)
    return x.T @ x / n


def _reference_sweep(w, hinv, codebook, keep, prune_block=None, extra=0):
    """Unblocked OBQ/GPTQ recurrence with the full inverse Hessian, float64.

    Column ``i`` becomes ``q`` (the nearest centroid of ``codebook``, or the value itself
    when ``codebook`` is None; zero where not kept), the later columns take
    ``-err_i / Hinv[i, i] * Hinv[i, i+1:]``, and ``Hinv`` loses column ``i`` by a
    Schur-complement step. With ``prune_block``, ``extra`` entries are pruned SparseGPT
    style: at each block's first column the lowest ``w² / d_i`` of the current weights
    (``d_i`` the squared Cholesky diagonal of the original ``Hinv``) within the block.
    """
    w = w.to(F64).clone()
    hinv = hinv.to(F64).clone()
    keep = keep.clone()
    rows, cols = w.shape
    codes = torch.full((rows, cols), -1, dtype=torch.int64)
    diag_u2 = torch.diagonal(torch.linalg.cholesky(hinv, upper=True)).square()
    if prune_block is not None:
        starts = list(range(0, cols, prune_block))
        cap = torch.stack([keep[:, s : s + prune_block].sum() for s in starts])
        share = quotas(extra, cap)
    for i in range(cols):
        if prune_block is not None and i % prune_block == 0:
            n = int(share[i // prune_block])
            blk = slice(i, min(i + prune_block, cols))
            score = w[:, blk].square() / diag_u2[blk].unsqueeze(0)
            score = torch.where(keep[:, blk], score, torch.inf)
            sub = keep[:, blk].clone().reshape(-1)
            sub[torch.topk(score.reshape(-1), n, largest=False).indices] = False
            keep[:, blk] = sub.view(rows, -1)
        col = w[:, i]
        if codebook is None:
            q = col.clone()
        else:
            c = nearest_codes(col, codebook.to(F64))
            q = codebook.to(F64).expand(rows, -1).gather(1, c.unsqueeze(1)).squeeze(1)
            codes[:, i] = torch.where(keep[:, i], c, -1)
        q = torch.where(keep[:, i], q, 0.0)
        err = col - q
        w[:, i] = q
        w[:, i + 1 :] -= (err / hinv[i, i]).unsqueeze(1) * hinv[i, i + 1 :].unsqueeze(0)
        hinv = hinv - torch.outer(hinv[:, i], hinv[i, :]) / hinv[i, i]
    return codes, w, keep


def _setup(seed: int, rows: int = 6, cols: int = 10, pruned: bool = False):
    g = torch.Generator().manual_seed(seed)
    h = _hessian(64, cols, seed) + 0.01 * torch.eye(cols, dtype=F64)
    hinv = torch.linalg.inv(h)
    u = torch.linalg.cholesky(hinv, upper=True)
    w = torch.randn(rows, cols, generator=g, dtype=F64)
    keep = torch.ones(rows, cols, dtype=torch.bool)
    if pruned:
        keep = torch.rand(rows, cols, generator=g) > 0.3
    return w, h, hinv, u, keep


@pytest.mark.parametrize("block", [1, 3, 4, 10, 128])
@pytest.mark.parametrize("per_row", [True, False])
@pytest.mark.parametrize("pruned", [False, True])
def test_codebook_sweep_equals_unblocked_reference(block, per_row, pruned):
    for seed in range(3):
        w, _, hinv, u, keep = _setup(seed, pruned=pruned)
        g = torch.Generator().manual_seed(100 + seed)
        k = 4
        cb = torch.randn(6 if per_row else 1, k, generator=g, dtype=F64).sort(dim=1).values
        codes = codebook_sweep(w, u, cb, keep, block=block)
        ref, _, _ = _reference_sweep(w, hinv, cb, keep)
        assert torch.equal(codes, ref), (seed, block)
        assert torch.equal(codes < 0, ~keep)
        assert int(codes.max()) < k


def test_codebook_sweep_float32_factor_matches_reference():
    # The float32 path the library runs (factor from inverse_cholesky) gives the same codes.
    x = _correlated_inputs(128, 10, 7)
    h = x.T @ x / 128
    u, dead, used = inverse_cholesky(h, damping=0.01)
    lam = used * float(torch.diagonal(h).mean())
    hinv = torch.linalg.inv(h.to(F64) + lam * torch.eye(10, dtype=F64))
    g = torch.Generator().manual_seed(3)
    w = torch.randn(6, 10, generator=g)
    cb = torch.randn(6, 8, generator=g).sort(dim=1).values
    keep = torch.ones(6, 10, dtype=torch.bool)
    codes = codebook_sweep(w, u, cb, keep, block=4)
    ref, _, _ = _reference_sweep(w, hinv, cb, keep)
    assert not dead.any()
    assert torch.equal(codes, ref)


def test_codebook_sweep_beats_plain_rounding():
    # Error feedback is the point of the sweep: it must lower the output error.
    w, h, _, u, keep = _setup(1, rows=16, cols=10)
    cb = torch.linspace(-2, 2, 4, dtype=F64).unsqueeze(0)
    swept = lookup(cb, codebook_sweep(w, u, cb, keep, block=3))
    rounded = lookup(cb, nearest_codes(w.reshape(-1), cb).view(w.shape))
    assert output_error(w, swept, h) < 0.8 * output_error(w, rounded, h)


@pytest.mark.parametrize("block", [1, 3, 4, 10])
def test_prune_sweep_fixed_mask_equals_reference(block):
    for seed in range(3):
        w, _, hinv, u, keep = _setup(seed, pruned=True)
        new_keep, new_w = prune_sweep(w, u, keep, 0, block=block)
        assert torch.equal(new_keep, keep)
        _, ref_w, _ = _reference_sweep(w, hinv, None, keep)
        torch.testing.assert_close(new_w, ref_w, rtol=1e-10, atol=1e-10)
        # Values held under the mask are the target too: zeroing them is compensated.
        h = torch.linalg.inv(hinv)
        assert output_error(w, new_w, h) <= output_error(w, torch.where(keep, w, 0.0), h) + 1e-9


@pytest.mark.parametrize("block", [3, 4, 10])
@pytest.mark.parametrize("pre_pruned", [False, True])
def test_prune_sweep_extra_equals_reference(block, pre_pruned):
    for seed in range(3):
        w, h, hinv, u, keep = _setup(seed, pruned=pre_pruned)
        extra = int(keep.sum()) // 2 + 1  # odd split over blocks of unequal capacity
        new_keep, new_w = prune_sweep(w, u, keep, extra, block=block)
        assert int((~new_keep).sum()) == int((~keep).sum()) + extra
        assert not bool((new_keep & ~keep).any())  # nothing pruned comes back
        assert bool((new_w[~new_keep] == 0).all())
        _, ref_w, ref_keep = _reference_sweep(w, hinv, None, keep, prune_block=block, extra=extra)
        assert torch.equal(new_keep, ref_keep)
        torch.testing.assert_close(new_w, ref_w, rtol=1e-10, atol=1e-10)
        # The final mask held fixed in the plain recurrence gives the same survivors.
        _, fixed_w, _ = _reference_sweep(w, hinv, None, new_keep)
        torch.testing.assert_close(new_w, fixed_w, rtol=1e-10, atol=1e-10)
        # Survivors were updated, and the update pays: lower output error than zeroing alone.
        w0 = torch.where(keep, w, 0.0)
        assert not torch.allclose(new_w[new_keep], w0[new_keep])
        if not pre_pruned:
            # The greedy update pays here; it is no theorem (with most of a narrow layer
            # pruned, compensation pushed into entries pruned later can cost more).
            assert output_error(w0, new_w, h) < output_error(w0, torch.where(new_keep, w, 0.0), h)


def _stacked_lstsq(w, codes, h, k, per_row):
    """Minimiser of ``tr((W - Q) H (W - Q)ᵀ)`` over the centroids, by lstsq on ``(W - Q) L``."""
    ell = torch.linalg.cholesky(h.to(F64))  # H = L Lᵀ
    w = w.to(F64)
    rows = range(w.shape[0])
    if per_row:
        out = []
        for r in rows:
            s = torch.stack([(codes[r] == j).to(F64) for j in range(k)], 1)  # (C, k)
            a = (s.T @ ell).T  # columns: (S_j L)
            out.append(torch.linalg.lstsq(a, ell.T @ w[r]).solution)
        return torch.stack(out)
    cols = []
    for j in range(k):
        cols.append(((codes == j).to(F64) @ ell).reshape(-1))
    a = torch.stack(cols, 1)
    return torch.linalg.lstsq(a, (w @ ell).reshape(-1)).solution.unsqueeze(0)


@pytest.mark.parametrize("per_row", [True, False])
@pytest.mark.parametrize("pruned", [False, True])
def test_refit_codebook_is_exact_least_squares(per_row, pruned):
    g = torch.Generator().manual_seed(5)
    rows, cols, k = 5, 12, 3
    h = _hessian(64, cols, 5).to(torch.float32)
    w = torch.randn(rows, cols, generator=g)
    # Every centroid owns entries of every row, so the least-squares problem is full rank.
    codes = torch.arange(cols).remainder(k).repeat(rows, 1)
    codes = codes[:, torch.randperm(cols, generator=g)]
    if pruned:
        codes[:, -2:] = -1
        codes[0, 0] = -1
    cb = torch.randn(rows if per_row else 1, k, generator=g)
    fit = refit_codebook(w, codes, h, cb)
    ref = _stacked_lstsq(w, codes, h, k, per_row)
    assert fit.shape == cb.shape and fit.dtype == torch.float32
    torch.testing.assert_close(fit.to(F64), ref, rtol=2e-4, atol=2e-4)
    err_fit = output_error(w, lookup(fit, codes), h)
    err_ref = output_error(w, lookup(ref, codes), h)
    assert err_fit <= err_ref * (1 + 1e-5)
    assert err_fit <= output_error(w, lookup(cb, codes), h)


def test_refit_never_increases_error_and_keeps_empty_centroids():
    h = _hessian(64, 8, 9).to(torch.float32)
    g = torch.Generator().manual_seed(9)
    for trial in range(20):
        w = torch.randn(4, 8, generator=g)
        cb = torch.randn(1, 5, generator=g).sort(dim=1).values
        codes = torch.randint(-1, 4, (4, 8), generator=g)  # centroid 4 owns nothing
        before = output_error(w, lookup(cb, codes), h)
        fit = refit_codebook(w, codes, h, cb)
        assert output_error(w, lookup(fit, codes), h) <= before * (1 + 1e-6), trial
        # Kept up to the solver's 1e-9 relative regularisation.
        torch.testing.assert_close(fit[0, 4], cb[0, 4], rtol=1e-5, atol=0.0)


def test_sort_codebook_keeps_values():
    g = torch.Generator().manual_seed(2)
    for per_row in (True, False):
        cb = torch.randn(4 if per_row else 1, 6, generator=g)
        codes = torch.randint(-1, 6, (4, 9), generator=g)
        sorted_cb, renamed = sort_codebook(cb, codes)
        assert bool((sorted_cb[:, 1:] >= sorted_cb[:, :-1]).all())
        assert torch.equal(lookup(sorted_cb, renamed), lookup(cb, codes))
        assert torch.equal(renamed < 0, codes < 0)


def test_hessian_accumulator_is_mean_outer_product():
    x = _correlated_inputs(50, 6, 1)
    acc = HessianAccumulator(6)
    for chunk in x.split(7):
        acc.add(chunk)
    assert acc.count == 50
    torch.testing.assert_close(acc.hessian(), x.T @ x / 50, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("dim", [767, 768, 1001])
def test_hessian_accumulator_of_wide_inputs_is_computed_in_halves_and_symmetric(dim):
    x = torch.randn(90, dim, generator=torch.Generator().manual_seed(dim))
    acc = HessianAccumulator(dim)
    for chunk in x.split(40):
        acc.add(chunk)
    h = acc.hessian()
    torch.testing.assert_close(h, (x.double().T @ x.double() / 90).float(), rtol=1e-4, atol=1e-4)
    if dim >= 768:  # the blocked path mirrors one triangle: exactly symmetric
        assert torch.equal(h, h.T)


def test_hessian_accumulator_cross_term_and_reference_mean():
    x = _correlated_inputs(50, 6, 1)
    ref = x + 0.1 * _correlated_inputs(50, 6, 2)
    acc = HessianAccumulator(6)
    for a, r in zip(x.split(7), ref.split(7)):
        acc.add(a, r)
    torch.testing.assert_close(acc.cross(), ref.T @ x / 50, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(acc.reference_mean(), ref.mean(0), rtol=1e-5, atol=1e-5)
    assert HessianAccumulator(6).reference_mean() is None


def test_dense_target_is_the_regression_onto_the_dense_outputs_regularised_towards_w():
    # Compressed-model inputs x̃ differ from the dense ones x; W' fits W x from x̃.
    x = _correlated_inputs(400, 6, 3).to(F64)
    xt = x + 0.2 * _correlated_inputs(400, 6, 4).to(F64)
    w = torch.randn(3, 6, generator=torch.Generator().manual_seed(5), dtype=F64)
    h, cross = xt.T @ xt / 400, x.T @ xt / 400
    stats = Statistics(hessian=h.float(), cross=cross.float())
    for damping in (1e-6, 0.1, 1.0):
        lam = damping * float(torch.diagonal(h).mean())
        # argmin_Q ||W X - Q X̃||² + λ n ||Q - W||²
        a = torch.cat([xt, (lam * 400) ** 0.5 * torch.eye(6, dtype=F64)])
        b = torch.cat([x @ w.T, (lam * 400) ** 0.5 * w.T])
        expected = torch.linalg.lstsq(a, b).solution.T
        got = dense_target(w.float(), stats, damping).to(F64)
        torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-4)
    # Without a cross term the target is W itself.
    assert torch.equal(dense_target(w.float(), Statistics(hessian=h.float()), 0.1), w.float())


def test_centered_statistics_with_a_dense_reference():
    x = _correlated_inputs(300, 5, 6).to(F64) + 1.0
    ref = x + 0.3
    h, cross = x.T @ x / 300, ref.T @ x / 300
    s = Statistics(
        hessian=h.float(),
        cross=cross.float(),
        mean=x.mean(0).float(),
        reference_mean=ref.mean(0).float(),
    )
    c = s.centered()
    xc, rc = x - x.mean(0), ref - ref.mean(0)
    torch.testing.assert_close(c.hessian.to(F64), xc.T @ xc / 300, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(c.cross.to(F64), rc.T @ xc / 300, rtol=1e-4, atol=1e-4)
    assert s.centered() is c  # computed once: layers sharing the statistics share it
    # A cross term without the reference mean cannot be centred.
    u = Statistics(hessian=h.float(), cross=cross.float(), mean=x.mean(0).float())
    assert u.centered() is u


def test_a_narrow_layers_cross_term_is_gathered_times_its_weight():
    x = _correlated_inputs(60, 8, 7) + 0.5
    ref = x + 0.1 * _correlated_inputs(60, 8, 8)
    w = torch.randn(3, 8, generator=torch.Generator().manual_seed(9))
    full, narrow = HessianAccumulator(8), HessianAccumulator(8, weight=w)
    for a, r in zip(x.split(13), ref.split(13)):
        full.add(a, r)
        narrow.add(a, r)
    assert narrow.cross_weight is not None and torch.equal(narrow.cross_weight, w)
    assert narrow.cross().shape == (3, 8)
    torch.testing.assert_close(narrow.cross(), w @ full.cross(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(narrow.hessian(), full.hessian())
    # Where W C costs no less than C (2 R >= C) the full cross term is kept.
    square = HessianAccumulator(8, weight=torch.randn(4, 8))
    square.add(x, ref)
    assert square.cross_weight is None and square.cross().shape == (8, 8)


@pytest.mark.parametrize("centered", [False, True])
def test_dense_target_from_a_premultiplied_cross_term_equals_the_full_one(centered):
    x = _correlated_inputs(300, 8, 10) + 0.5
    ref = x + 0.2 * _correlated_inputs(300, 8, 11)
    w = torch.randn(3, 8, generator=torch.Generator().manual_seed(12))
    full, narrow = HessianAccumulator(8), HessianAccumulator(8, weight=w)
    full.add(x, ref)
    narrow.add(x, ref)

    def stats(acc: HessianAccumulator) -> Statistics:
        s = Statistics(
            hessian=acc.hessian(),
            cross=acc.cross(),
            mean=acc.mean(),
            reference_mean=acc.reference_mean(),
            cross_weight=acc.cross_weight,
        )
        return s.centered() if centered else s

    a, b = stats(full), stats(narrow)
    if centered:
        torch.testing.assert_close(b.cross, w @ a.cross, rtol=1e-4, atol=1e-5)
    for damping in (0.01, 0.1):
        want = dense_target(w, a, damping)
        assert not torch.allclose(want, w, atol=1e-3)  # the inputs differ: a real target
        torch.testing.assert_close(dense_target(w, b, damping), want, rtol=1e-4, atol=1e-5)


def test_dense_target_refuses_a_cross_term_gathered_for_another_weight(caplog):
    x = _correlated_inputs(100, 8, 13)
    w = torch.randn(3, 8, generator=torch.Generator().manual_seed(14))
    acc = HessianAccumulator(8, weight=w)
    acc.add(x, x + 0.1)
    stats = Statistics(hessian=acc.hessian(), cross=acc.cross(), cross_weight=acc.cross_weight)
    other = w + 1.0
    with caplog.at_level(logging.WARNING):
        got = dense_target(other, stats, 0.1)
    assert torch.equal(got, other)  # fitted to its own outputs, never to W's
    assert "gathered for another weight" in caplog.text


@pytest.mark.parametrize("damping", [0.01, 0.1, 1.0])
def test_inverse_cholesky_factorises_damped_inverse(damping):
    h = _hessian(40, 8, 4).to(torch.float32)
    u, dead, used = inverse_cholesky(h, damping)
    assert used == damping and not dead.any()
    assert torch.equal(u, torch.triu(u))
    lam = damping * float(torch.diagonal(h).mean())
    want = torch.linalg.inv(h.to(F64) + lam * torch.eye(8, dtype=F64))
    torch.testing.assert_close((u.T @ u).to(F64), want, rtol=1e-3, atol=1e-6)


def test_inverse_cholesky_dead_inputs():
    x = _correlated_inputs(40, 6, 2)
    x[:, [1, 4]] = 0.0  # inputs always zero on the calibration data
    h = x.T @ x / 40
    u, dead, _ = inverse_cholesky(h, 0.01)
    assert dead.tolist() == [False, True, False, False, True, False]
    assert bool(torch.isfinite(u).all())
    inv = (u.T @ u).to(F64)
    # A dead input is decoupled: its errors propagate into no other column.
    assert float(inv[dead][:, ~dead].abs().max()) == 0.0
    h2 = h.to(F64).clone()
    h2[dead, dead] = 1.0
    lam = 0.01 * float(torch.diagonal(h2).mean())
    torch.testing.assert_close(
        inv, torch.linalg.inv(h2 + lam * torch.eye(6, dtype=F64)), rtol=1e-3, atol=1e-6
    )


def test_inverse_cholesky_retries_singular_with_more_damping(caplog):
    h = torch.ones(4, 4)  # rank one: the undamped factorisation hits a zero pivot
    with caplog.at_level(logging.WARNING, logger="torchprune_share.calibration.hessian"):
        u, _, used = inverse_cholesky(h, damping=0.0)
    assert used > 0.0
    assert any("dampening" in r.getMessage() for r in caplog.records)
    want = torch.linalg.inv(h.to(F64) + used * torch.eye(4, dtype=F64))
    torch.testing.assert_close((u.T @ u).to(F64), want, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize(
    "h",
    [
        torch.tensor([[1.0, 1e7], [1e7, 1.0]]),  # indefinite beyond any retry
        torch.tensor([[1.0, float("nan")], [float("nan"), 1.0]]),
    ],
)
def test_inverse_cholesky_impossible_raises(h):
    with pytest.raises(ValueError, match="could not be factorised"):
        inverse_cholesky(h, damping=0.01)


def _layer(seed: int, rows: int = 12, cols: int = 24):
    x = _correlated_inputs(256, cols, seed)
    h = x.T @ x / 256
    g = torch.Generator().manual_seed(seed + 50)
    w = torch.randn(rows, cols, generator=g)
    # As in trained networks, the weights reading the large-scale inputs are small: the
    # weights' own error then says little about the output's.
    w[:, : cols // 4] *= 0.25
    return w, h


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("per_row", [True, False])
@pytest.mark.parametrize("pruned", [False, True])
def test_share_matrix_hessian_le_diagonal_le_data_free(bits, per_row, pruned):
    for seed in range(2):
        w, h = _layer(seed)
        keep = torch.ones_like(w, dtype=torch.bool)
        if pruned:  # as compressible_state gives it: zero where pruned
            keep = torch.rand(w.shape, generator=torch.Generator().manual_seed(seed)) > 0.3
            w = torch.where(keep, w, 0.0)
        errs = {}
        # "free" as the data-free path runs it: unweighted, from the linear init.
        for name, stats, algo, init in [
            ("free", Statistics(), "diagonal", "linear"),
            ("diagonal", Statistics(hessian=h), "diagonal", "dp"),
            ("hessian", Statistics(hessian=h), "hessian", "dp"),
        ]:
            cb, codes = share_matrix(
                w, keep, stats, bits=bits, per_row=per_row, algorithm=algo, init=init
            )
            assert cb.shape == (w.shape[0] if per_row else 1, cb.shape[1])
            assert cb.shape[1] <= 2**bits
            assert torch.equal(codes < 0, ~keep)  # pruned entries keep code -1
            assert int(codes.max()) < cb.shape[1]
            q = lookup(cb, codes)
            for row in q if per_row else [q[keep]]:
                assert len(torch.unique(row[row != 0] if pruned else row)) <= 2**bits
            assert bool((q[~keep] == 0).all())
            errs[name] = output_error(w, q, h)
        assert errs["hessian"] <= errs["diagonal"] * (1 + 1e-6), errs
        assert errs["diagonal"] <= 0.9 * errs["free"], errs
        assert errs["hessian"] <= 0.5 * errs["free"], errs


@pytest.mark.parametrize("fraction", [0.3, 0.5, 0.8])
@pytest.mark.parametrize("pruned", [False, True])
def test_prune_matrix_hessian_le_diagonal_le_magnitude(fraction, pruned):
    # At 80 % of a layer narrower than one sweep block the SparseGPT mask is chosen once,
    # before any update, and can lose to Wanda's per-row mask (by up to ~30 % measured on
    # 12 x 24; even on 32 x 128, better from 64 x 256 on): there both only beat magnitude.
    for seed in range(2):
        w, h = _layer(seed)
        keep = torch.ones_like(w, dtype=torch.bool)
        if pruned:
            keep = torch.rand(w.shape, generator=torch.Generator().manual_seed(seed)) > 0.2
            w = torch.where(keep, w, 0.0)
        extra = int(fraction * int(keep.sum()))
        errs = {}
        for name, stats, algo in [
            ("magnitude", Statistics(), "diagonal"),
            ("diagonal", Statistics(hessian=h), "diagonal"),
            ("hessian", Statistics(hessian=h), "hessian"),
        ]:
            new_keep, new_w = prune_matrix(w, keep, stats, extra, algorithm=algo)
            assert int((~new_keep).sum()) == int((~keep).sum()) + extra
            assert not bool((new_keep & ~keep).any())
            assert (new_w is not None) == (name == "hessian")
            q = new_w if new_w is not None else torch.where(new_keep, w, 0.0)
            assert bool((q[~new_keep] == 0).all())
            errs[name] = output_error(w, q, h)
        if fraction <= 0.5:
            assert errs["hessian"] <= errs["diagonal"], errs
        assert errs["hessian"] <= 0.7 * errs["magnitude"], errs
        assert errs["diagonal"] <= 0.8 * errs["magnitude"], errs


def test_prune_matrix_diagonal_is_per_row_wanda():
    w, h = _layer(3)
    keep = torch.ones_like(w, dtype=torch.bool)
    new_keep, _ = prune_matrix(w, keep, Statistics(hessian=h), w.numel() // 2, algorithm="diagonal")
    assert (~new_keep).sum(1).tolist() == [w.shape[1] // 2] * w.shape[0]
    score = w.abs() * torch.diagonal(h).sqrt()
    for r in range(w.shape[0]):
        assert float(score[r][~new_keep[r]].max()) <= float(score[r][new_keep[r]].min())


@given(
    st.lists(st.integers(0, 50), min_size=1, max_size=12),
    st.floats(0.0, 1.0),
)
def test_quotas_exact_and_within_capacity(capacity, fraction):
    cap = torch.tensor(capacity)
    total = round(fraction * sum(capacity))
    share = quotas(total, cap)
    assert share.dtype == torch.int64 and share.shape == cap.shape
    assert int(share.sum()) == total
    assert bool((share >= 0).all()) and bool((share <= cap).all())


@pytest.mark.parametrize(
    "make, shape",
    [
        (lambda: torch.nn.Linear(5, 3), (2, 4, 5)),
        (lambda: torch.nn.Conv2d(2, 3, 3), (2, 2, 6, 7)),
        (lambda: torch.nn.Conv2d(2, 3, (2, 3), stride=2, padding=1, dilation=(1, 2)), (2, 2, 7, 8)),
        (lambda: torch.nn.Conv2d(2, 3, 3, padding="same", dilation=2), (1, 2, 6, 6)),
        (lambda: torch.nn.Conv2d(2, 3, 2, padding="same"), (1, 2, 5, 5)),
        (lambda: torch.nn.Conv2d(2, 3, 3, padding="valid"), (1, 2, 5, 5)),
        (lambda: torch.nn.Conv2d(2, 3, 3, padding=1, padding_mode="reflect"), (2, 2, 5, 6)),
        (lambda: torch.nn.Conv2d(2, 3, 3, padding=(1, 2), padding_mode="circular"), (1, 2, 5, 6)),
        (lambda: torch.nn.Conv2d(2, 3, 3), (2, 5, 5)),  # unbatched
        (lambda: torch.nn.Conv1d(2, 3, 3, stride=2, padding=2, dilation=2), (2, 2, 11)),
        (lambda: torch.nn.Conv1d(2, 3, 4, padding="same"), (2, 2, 9)),
        (lambda: torch.nn.Conv1d(2, 3, 3, padding=1, padding_mode="replicate"), (2, 2, 7)),
        (lambda: torch.nn.Conv1d(2, 3, 3), (2, 7)),  # unbatched
    ],
)
@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
def test_input_rows_reproduce_the_layer(make, shape):
    # y_t = W x_t for every row the Hessian is built from: the unfolding is the layer.
    from torchprune_share.calibration.layers import input_rows

    torch.manual_seed(0)
    layer = make().double()
    layer.bias = None
    x = torch.randn(*shape, dtype=F64)
    rows = input_rows(layer, x)
    w = layer.weight.detach().reshape(layer.weight.shape[0], -1)
    with torch.no_grad():
        y = layer(x)
    if isinstance(layer, torch.nn.Linear):
        want = y.reshape(-1, w.shape[0])
    else:
        if x.dim() == layer.weight.dim() - 1:  # unbatched
            y = y.unsqueeze(0)
        want = y.flatten(2).transpose(1, 2).reshape(-1, w.shape[0])
    torch.testing.assert_close(rows @ w.T, want)


# -- the numba loops agree with the torch formulation they replace ---------------------------
@pytest.mark.parametrize("k", [1, 4, 16])
def test_numba_sweeps_and_refit_match_the_torch_fallback(k, monkeypatch):
    from torchprune_share.calibration import kernels

    if not kernels.AVAILABLE:
        pytest.skip("numba is not installed")
    g = torch.Generator().manual_seed(k)
    x = _correlated_inputs(400, 150, k)
    h = x.T @ x / 400
    w = torch.randn(24, 150, generator=g)
    keep = torch.rand(24, 150, generator=g) > 0.3
    u, _, _ = inverse_cholesky(h, 0.1)
    cb = torch.sort(torch.randn(24, k, generator=g), dim=1).values
    results = []
    for available in (True, False):
        monkeypatch.setattr(kernels, "AVAILABLE", available)
        codes = codebook_sweep(w, u, cb, keep, block=32)
        pk, pw = prune_sweep(w, u, keep, 900, block=32)
        refit = refit_codebook(w, codes, h, cb)
        results.append((codes, pk, pw, refit))
    (c1, k1, w1, r1), (c2, k2, w2, r2) = results
    # Rounding may move an entry sitting on a midpoint; everything else is the same.
    assert (c1 == c2).float().mean() > 0.995
    assert (k1 == k2).float().mean() > 0.995
    assert torch.allclose(w1, w2, atol=1e-3, rtol=1e-3)
    r2_on_c1 = refit_codebook(w, c1, h, cb)
    assert torch.allclose(r1, r2_on_c1, atol=1e-4, rtol=1e-4)
    assert r2.shape == r1.shape


@pytest.mark.parametrize("threads", [1, 2])
def test_refit_equations_are_the_same_on_one_thread_and_on_several(threads, monkeypatch):
    # One thread takes a serial kernel of its own (no parallel compile in the process).
    from torchprune_share.calibration import kernels, refit

    if not kernels.AVAILABLE:
        pytest.skip("numba is not installed")
    g = torch.Generator().manual_seed(3)
    x = _correlated_inputs(300, 40, 3)
    h = x.T @ x / 300
    w = torch.randn(12, 40, generator=g)
    codes = torch.randint(-1, 8, (12, 40), generator=g)
    serial = kernels.normal_equations(h.numpy(), w.numpy(), codes.numpy(), 8)
    parallel = kernels.normal_equations_parallel(h.numpy(), w.numpy(), codes.numpy(), 8)
    for a, b in zip(serial, parallel):
        np.testing.assert_array_equal(a, b)
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    mats, rhs = refit._normal_equations(w, codes, h, 8)
    np.testing.assert_array_equal(mats.numpy(), serial[0])
    np.testing.assert_array_equal(rhs.numpy(), serial[1])
    # Against the definition: S_rᵀ H S_r with S_r the one-hot of row r's codes.
    s = (
        torch.nn.functional.one_hot(codes[5].clamp(min=0), 8).double()
        * (codes[5] >= 0).double()[:, None]
    )
    torch.testing.assert_close(mats[5], s.T @ h.double() @ s, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("per_row", [True, False])
def test_hessian_codebooks_start_from_kmeans_weighted_between_the_two_error_costs(per_row):
    # The k-means of the "hessian" sweep weighs column j by sqrt(H_jj / [H⁻¹]_jj) (H
    # dampened): the geometric mean of its error's cost with no compensation and with
    # all of it. refits=0 returns the k-means centroids, so they can be compared with a
    # k-means run here on weights computed the plain way (an explicit inverse).
    from torchprune_share import kmeans
    from torchprune_share.calibration.matrix import INIT_ITERS

    w, h = _layer(3, rows=6, cols=40)
    keep = torch.ones_like(w, dtype=torch.bool)
    stats = Statistics(hessian=h)
    cb, _ = share_matrix(w, keep, stats, bits=2, per_row=per_row, refits=0)
    d = torch.diagonal(h).double()
    damped = h.double() + 0.1 * float(d.mean()) * torch.eye(40, dtype=torch.float64)
    weight = (torch.diagonal(damped) / torch.linalg.inv(damped).diagonal()).sqrt()
    target = dense_target(w, stats, 0.1)
    sw = weight.float().expand_as(w)
    if per_row:
        ref, _ = kmeans.kmeans1d(target, 4, init="dp", sample_weight=sw, max_iter=INIT_ITERS)
    else:
        ref, _ = kmeans.kmeans1d(
            target.reshape(-1), 4, init="dp", sample_weight=sw.reshape(-1), max_iter=INIT_ITERS
        )
        ref = ref.unsqueeze(0)
    torch.testing.assert_close(cb, ref.to(torch.float32), rtol=1e-4, atol=1e-5)
    # and the diagonal algorithm keeps llama.cpp's importance, diag H alone.
    cb_diag, _ = share_matrix(w, keep, stats, bits=2, per_row=per_row, algorithm="diagonal")
    sw = (torch.diagonal(h) + 0.1 * float(torch.diagonal(h).mean())).expand_as(w)
    if per_row:
        ref, _ = kmeans.kmeans1d(target, 4, init="dp", sample_weight=sw, max_iter=INIT_ITERS)
        torch.testing.assert_close(cb_diag, ref, rtol=1e-4, atol=1e-5)


def test_rows_of_equal_importance_are_clustered_as_plain_k_means_per_row(monkeypatch):
    # An embedding's importance per channel is its token's count, the same across the
    # row: each row's weighted k-means is the unweighted one, so the second ("density")
    # init that skewed importance needs is not run, and the result is plain per-row
    # k-means from the calibrated init, rows no token reached included.
    from torchprune_share import kmeans
    from torchprune_share.calibration.matrix import INIT_ITERS

    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 40, generator=g) * torch.linspace(0.5, 3.0, 6).unsqueeze(1)
    counts = torch.tensor([0.0, 1.0, 3.0, 10.0, 100.0, 2.0])
    keep = torch.ones_like(w, dtype=torch.bool)
    stats = Statistics(importance=counts.unsqueeze(1).expand_as(w).clone())
    runs = []
    real = kmeans.kmeans1d
    monkeypatch.setattr(kmeans, "kmeans1d", lambda *a, **k: runs.append(k["init"]) or real(*a, **k))
    cb, codes = share_matrix(w, keep, stats, bits=2, per_row=True)
    assert runs == ["dp"]
    monkeypatch.setattr(kmeans, "kmeans1d", real)
    ref, labels = kmeans.kmeans1d(w, 4, init="dp", max_iter=INIT_ITERS)
    torch.testing.assert_close(cb, ref.to(torch.float32), rtol=1e-5, atol=1e-6)
    assert torch.equal(codes, labels.to(torch.int64))
    # Importance that varies within a row still gets the better of the two inits.
    varied = Statistics(importance=torch.rand(6, 40, generator=g) ** 8)
    cb_v, codes_v = share_matrix(w, keep, varied, bits=2, per_row=True)
    alone, alone_codes = kmeans.kmeans1d(
        w, 4, init="dp", sample_weight=varied.importance, max_iter=INIT_ITERS
    )

    def sse(c: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return ((w - lookup(c, k)).square() * varied.importance).sum(1)

    assert bool((sse(cb_v, codes_v) <= sse(alone, alone_codes.to(torch.int64)) + 1e-6).all())
