"""Tests of torchprune_share.kmeans: 1-D k-means (lloyd, optimal, sklearn)."""

from __future__ import annotations

import hashlib
import itertools

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from torchprune_share import kmeans
from torchprune_share.kmeans import INITS, METHODS, kmeans1d, kmeans1d_centroids, sse

# --------------------------------------------------------------------------- #
# Reference implementations
# --------------------------------------------------------------------------- #


def brute_force_optimum(x: np.ndarray, k: int, w: np.ndarray | None = None) -> float:
    """Minimum weighted SSE over all partitions of the distinct values into k runs."""
    w = np.ones_like(x, dtype=np.float64) if w is None else w.astype(np.float64)
    keep = w > 0
    x, w = x[keep].astype(np.float64), w[keep]
    vals = np.unique(x)
    wv = np.array([w[x == v].sum() for v in vals])
    k = min(k, len(vals))
    best = np.inf
    for cuts in itertools.combinations(range(1, len(vals)), k - 1):
        b = (0, *cuts, len(vals))
        total = 0.0
        for a, e in itertools.pairwise(b):
            mu = np.average(vals[a:e], weights=wv[a:e])
            total += float((wv[a:e] * (vals[a:e] - mu) ** 2).sum())
        best = min(best, total)
    return best


def naive_lloyd(x: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Textbook Lloyd until the labels stop changing; None if a cluster empties."""
    lab = None
    for _ in range(10_000):
        d = np.abs(x[:, None] - c[None, :])
        new = d.argmin(axis=1)
        if lab is not None and (new == lab).all():
            return c, lab
        lab = new
        if len(np.unique(lab)) < len(c):
            return None, None
        c = np.array([x[lab == j].mean() for j in range(len(c))])
    raise AssertionError("naive Lloyd did not converge")


def check_contract(x: torch.Tensor, c: torch.Tensor, lab: torch.Tensor, w=None) -> None:
    """Sorted centroids, nearest-centroid labels (ties low), no empty cluster."""
    assert c.dtype == x.dtype
    assert lab.dtype == torch.int64
    assert lab.shape == x.shape
    xs = x.reshape(-1, x.shape[-1]).double()
    cs = c.reshape(-1, c.shape[-1]).double()
    ls = lab.reshape(-1, x.shape[-1])
    ws = None if w is None else w.reshape(-1, x.shape[-1])
    assert torch.isfinite(cs).all()
    for r in range(xs.shape[0]):
        cr = cs[r]
        assert (cr[1:] >= cr[:-1]).all(), cr
        assert ((ls[r] >= 0) & (ls[r] < len(cr))).all()
        d = (xs[r][:, None] - cr[None, :]).abs()
        # Nearest centroid; on an exact tie the lower index.
        ref = d.argmin(dim=1)
        dl = d.gather(1, ls[r][:, None])[:, 0]
        assert (dl <= d.min(dim=1).values).all()
        assert (ls[r] == ref).all() or bool((dl == d[torch.arange(len(ref)), ref]).all())
        weighted = torch.ones_like(ls[r], dtype=torch.bool) if ws is None else ws[r] > 0
        if not weighted.any():
            continue
        xr = xs[r][weighted]
        n_distinct = len(torch.unique(xr))
        owned = torch.bincount(ls[r][weighted], minlength=len(cr))
        k_row = min(len(cr), n_distinct)
        # Every real centroid owns a weighted point; padding slots (copies of
        # the row's largest value, rows with fewer distinct values) own none.
        assert (owned[:k_row] > 0).all(), (owned, cr)
        if k_row < len(cr):
            assert (cr[k_row:] == xr.max()).all()


# --------------------------------------------------------------------------- #
# Correctness against brute force
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("seed", range(6))
def test_optimal_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    for _ in range(8):
        n = int(rng.integers(1, 11))
        k = int(rng.integers(1, 6))
        x = np.round(rng.standard_normal(n), int(rng.integers(0, 3)))
        w = rng.integers(0, 4, n).astype(np.float64) if seed % 2 else None
        if w is not None and not (w > 0).any():
            w[0] = 1.0
        xt = torch.tensor(x, dtype=torch.float64)
        wt = None if w is None else torch.tensor(w)
        c, lab = kmeans1d(xt, k, method="optimal", sample_weight=wt)
        check_contract(xt, c, lab, wt)
        ref = brute_force_optimum(x, k, w)
        got = sse(xt, c, lab, wt)
        assert got == pytest.approx(ref, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("init", INITS)
def test_every_method_and_init_is_valid_and_bounded(method, init):
    rng = np.random.default_rng(hash((method, init)) % 2**32)
    for _ in range(4):
        n = int(rng.integers(2, 11))
        k = int(rng.integers(1, 5))
        x = torch.tensor(np.round(rng.standard_normal(n), 1), dtype=torch.float32)
        g = torch.Generator().manual_seed(0)
        c, lab = kmeans1d(x, k, init=init, method=method, generator=g)
        check_contract(x, c, lab)
        opt = brute_force_optimum(x.double().numpy(), k)
        got = sse(x, c, lab)
        assert got >= opt * (1 - 1e-6) - 1e-9
        if method == "optimal":
            assert got == pytest.approx(opt, rel=1e-5, abs=1e-9)


@pytest.mark.parametrize("seed", range(4))
def test_lloyd_equals_textbook_lloyd(seed):
    # Without empty clusters, the sorted/prefix-sum Lloyd takes exactly the
    # textbook steps (tol=0: run until the partition repeats).
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(300)
    xt = torch.tensor(x)
    for k in (2, 3, 5):
        c0 = np.linspace(x.min(), x.max(), k)
        ref_c, ref_lab = naive_lloyd(x, c0)
        if ref_c is None:
            continue
        c, lab = kmeans1d(xt, k, tol=0.0, max_iter=10_000)
        np.testing.assert_allclose(c.numpy(), ref_c, rtol=1e-12, atol=1e-12)
        assert (lab.numpy() == ref_lab).all()


def test_lloyd_is_a_fixed_point():
    rng = np.random.default_rng(1)
    x = torch.tensor(rng.laplace(size=5000))
    c, lab = kmeans1d(x, 16, tol=0.0, max_iter=5000)
    means = torch.stack([x[lab == j].mean() for j in range(16)])
    torch.testing.assert_close(c, means, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------- #
# Special inputs
# --------------------------------------------------------------------------- #


def test_docstring_example():
    x = torch.tensor([0.0, 0.1, 0.9, 1.0, 5.0])
    c, lab = kmeans1d(x, 2, method="optimal")
    torch.testing.assert_close(c, torch.tensor([0.5, 5.0]))
    assert lab.tolist() == [0, 0, 0, 0, 1]
    assert (
        sse(torch.tensor([0.0, 1.0, 3.0]), torch.tensor([0.5, 3.0]), torch.tensor([0, 0, 1])) == 0.5
    )


@pytest.mark.parametrize("method", METHODS)
def test_constant_input(method):
    x = torch.full((7,), 2.5)
    c, lab = kmeans1d(x, 4, method=method)
    assert c.tolist() == [2.5]
    assert lab.tolist() == [0] * 7


@pytest.mark.parametrize("method", METHODS)
def test_fewer_distinct_values_than_k(method):
    x = torch.tensor([3.0, 1.0, 3.0, 2.0, 1.0, 1.0, 0.1])
    c, lab = kmeans1d(x, 10, method=method)
    assert c.tolist() == sorted({float(v) for v in x.tolist()})
    assert (c[lab] == x).all()


def test_exact_distinct_values_are_bit_exact():
    # Distinct values come back exactly, even tiny ones next to large ones.
    x = torch.tensor([1e-30, 1e30, -7.25, 1e-30, 3.0], dtype=torch.float32)
    c, lab = kmeans1d(x, 4)
    assert c.tolist() == sorted({float(v) for v in x.tolist()})
    assert (c[lab] == x).all()


def test_ties_go_to_the_lower_centroid():
    # 1.0 is exactly between the centroids 0 and 2.
    x = torch.tensor([0.0, 0.0, 1.0, 2.0, 2.0], dtype=torch.float64)
    w = torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0], dtype=torch.float64)
    c, lab = kmeans1d(x, 2, sample_weight=w)
    assert c.tolist() == [0.0, 2.0]
    assert lab.tolist() == [0, 0, 0, 1, 1]


def test_duplicate_values_never_split():
    x = torch.tensor([0.0] * 5 + [1.0] * 5 + [1.5] + [10.0] * 3, dtype=torch.float64)
    for method in METHODS:
        _, lab = kmeans1d(x, 3, method=method)
        for v in x.unique():
            assert len(lab[x == v].unique()) == 1


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("method", ["lloyd", "optimal"])
def test_low_precision_dtypes_keep_every_cluster(dtype, method):
    # Rounding centroids to a coarse dtype must not merge or empty clusters.
    rng = np.random.default_rng(0)
    x = torch.tensor(rng.standard_normal(4000) * 0.05).to(dtype)
    c, lab = kmeans1d(x, 256, method=method)
    assert c.dtype == dtype
    check_contract(x, c, lab)


def test_max_iter_one_still_valid():
    rng = np.random.default_rng(0)
    x = torch.tensor(rng.laplace(size=20000), dtype=torch.float32)
    for init in INITS:
        c, lab = kmeans1d(x, 256, init=init, max_iter=1, generator=torch.Generator().manual_seed(1))
        assert c.shape == (256,)
        check_contract(x, c, lab)


def test_labels_exact_with_outlier_lookup_fallback():
    # One huge outlier squeezes every midpoint into one look-up cell.
    rng = np.random.default_rng(0)
    x = torch.tensor(np.concatenate([rng.standard_normal(200_000), [1e9]]), dtype=torch.float32)
    c, lab = kmeans1d(x, 64)
    mids = (c[1:].double() + c[:-1].double()) / 2
    ref = torch.searchsorted(mids, x.double(), right=False)
    assert torch.equal(lab, ref)
    assert torch.bincount(lab, minlength=64).min() > 0


def test_large_input_labels_match_searchsorted():
    rng = np.random.default_rng(3)
    x = torch.tensor(rng.laplace(size=300_000), dtype=torch.float32)
    for method in ("lloyd", "optimal"):
        c, lab = kmeans1d(x, 256, method=method)
        mids = (c[1:].double() + c[:-1].double()) / 2
        assert torch.equal(lab, torch.searchsorted(mids, x.double(), right=False))
        assert torch.bincount(lab, minlength=256).min() > 0


# --------------------------------------------------------------------------- #
# Validation
# --------------------------------------------------------------------------- #


_GOOD = {"x": torch.tensor([0.0, 1.0, 2.0]), "k": 2}


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        # Wrong type: TypeError.
        ({"x": torch.tensor([1, 2, 3])}, TypeError, "x must be a floating"),
        ({"x": [1.0, 2.0]}, TypeError, "x must be a torch.Tensor"),
        ({"x": np.zeros(3)}, TypeError, "x must be a torch.Tensor"),
        ({"k": "2"}, TypeError, r"k must be an int >= 1, got str"),
        ({"k": 2.0}, TypeError, "k must be an int >= 1"),
        ({"k": True}, TypeError, "k must be an int >= 1"),
        ({"k": None}, TypeError, "k must be an int >= 1"),
        ({"max_iter": 1.5}, TypeError, "max_iter must be an int >= 1"),
        ({"max_iter": "300"}, TypeError, "max_iter must be an int >= 1"),
        ({"tol": "x"}, TypeError, "tol must be a real number >= 0, got str"),
        ({"tol": None}, TypeError, "tol must be a real number >= 0"),
        ({"tol": True}, TypeError, "tol must be a real number >= 0"),
        ({"tol": torch.tensor(0.1)}, TypeError, "tol must be a real number"),
        ({"init": 3}, TypeError, r"init must be a str, one of \('linear'"),
        ({"init": None}, TypeError, "init must be a str"),
        ({"method": ["lloyd"]}, TypeError, "method must be a str"),
        ({"sample_weight": [1.0, 1.0, 1.0]}, TypeError, "sample_weight must be a torch.Tensor"),
        ({"sample_weight": np.ones(3)}, TypeError, "sample_weight must be a torch.Tensor"),
        (
            {"sample_weight": torch.ones(3, dtype=torch.complex64)},
            TypeError,
            "sample_weight must be a real",
        ),
        ({"generator": 3}, TypeError, "generator must be a torch.Generator or None, got int"),
        ({"generator": np.random.default_rng(0)}, TypeError, "generator must be a torch.Generator"),
        # Wrong value: ValueError.
        ({"x": torch.zeros(2, 2, 2)}, ValueError, r"x must be 1-D \(n,\) or 2-D"),
        ({"x": torch.zeros(0)}, ValueError, "x must not be empty"),
        ({"x": torch.zeros(3, 0)}, ValueError, "x must not be empty"),
        ({"x": torch.tensor([1.0, float("nan")])}, ValueError, "x must be finite"),
        ({"x": torch.tensor([[1.0, 2.0], [float("inf"), 0.0]])}, ValueError, "x must be finite"),
        ({"x": torch.tensor([-float("inf"), 0.0])}, ValueError, "x must be finite"),
        ({"k": 0}, ValueError, "k must be an int >= 1, got 0"),
        ({"k": -3}, ValueError, "k must be an int >= 1, got -3"),
        ({"max_iter": 0}, ValueError, "max_iter must be an int >= 1, got 0"),
        ({"tol": -1.0}, ValueError, "tol must be a real number >= 0, got -1.0"),
        ({"tol": float("nan")}, ValueError, "tol must be a real number >= 0, got nan"),
        ({"init": "kmeans+"}, ValueError, r"init must be one of \('linear', 'density'"),
        (
            {"method": "exact"},
            ValueError,
            r"method must be one of \('lloyd', 'optimal', 'sklearn'\)",
        ),
        ({"sample_weight": torch.ones(2)}, ValueError, r"sample_weight must have x's shape \(3,\)"),
        ({"sample_weight": torch.ones(1, 3)}, ValueError, "sample_weight must have x's shape"),
        (
            {"sample_weight": torch.tensor([1.0, -1.0, 1.0])},
            ValueError,
            "sample_weight must be .*>= 0",
        ),
        ({"sample_weight": torch.tensor([1.0, float("nan"), 1.0])}, ValueError, "finite and >= 0"),
        ({"sample_weight": torch.tensor([1.0, float("inf"), 1.0])}, ValueError, "finite and >= 0"),
        ({"sample_weight": torch.zeros(3)}, ValueError, "sample_weight is zero everywhere"),
    ],
)
def test_kmeans1d_error_convention(kwargs, exc, match):
    # TypeError for a wrong type, ValueError for a wrong value; the message
    # names the argument and the accepted range. Never the other class.
    args = {**_GOOD, **kwargs}
    x, k = args.pop("x"), args.pop("k")
    with pytest.raises(exc, match=match) as info:
        kmeans1d(x, k, **args)
    assert type(info.value) is exc


@pytest.mark.parametrize(
    ("args", "kwargs", "exc", "match"),
    [
        (([0.0, 1.0], torch.zeros(2), torch.zeros(2, dtype=torch.long)), {}, TypeError, "x must"),
        (
            (torch.zeros(2), (0.0, 1.0), torch.zeros(2, dtype=torch.long)),
            {},
            TypeError,
            "centroids",
        ),
        ((torch.zeros(2), torch.zeros(2), [0, 1]), {}, TypeError, "labels must be a torch.Tensor"),
        (
            (torch.zeros(2), torch.zeros(2), torch.zeros(2)),
            {},
            TypeError,
            "labels must be an integer",
        ),
        (
            (torch.zeros(2), torch.zeros(2), torch.zeros(2, dtype=torch.long)),
            {"sample_weight": [1.0, 1.0]},
            TypeError,
            "sample_weight must be a torch.Tensor",
        ),
        (
            (torch.zeros(2), torch.zeros(2), torch.zeros(3, dtype=torch.long)),
            {},
            ValueError,
            "labels of its shape",
        ),
        (
            (torch.zeros(2, 2), torch.zeros(2), torch.zeros(2, 2, dtype=torch.long)),
            {},
            ValueError,
            "centroids must be",
        ),
        (
            (torch.zeros(2), torch.zeros(2), torch.tensor([0, 2])),
            {},
            ValueError,
            r"labels must lie in \[0, 1\]",
        ),
        (
            (torch.zeros(2), torch.zeros(2), torch.zeros(2, dtype=torch.long)),
            {"sample_weight": torch.tensor([1.0, -1.0])},
            ValueError,
            "sample_weight must be finite and >= 0",
        ),
    ],
)
def test_sse_error_convention(args, kwargs, exc, match):
    with pytest.raises(exc, match=match) as info:
        sse(*args, **kwargs)
    assert type(info.value) is exc


def test_failed_call_leaves_inputs_untouched():
    x = torch.tensor([3.0, 1.0, 2.0])
    w = torch.tensor([1.0, -1.0, 1.0])
    with pytest.raises(ValueError):
        kmeans1d(x, 2, sample_weight=w)
    assert x.tolist() == [3.0, 1.0, 2.0] and w.tolist() == [1.0, -1.0, 1.0]


def test_public_names_and_choices():
    import torchprune_share.kmeans as km

    assert km.INITS == ("linear", "density", "random", "kmeans++", "dp")
    assert km.METHODS == ("lloyd", "optimal", "sklearn")
    assert set(km.__all__) == {"INITS", "METHODS", "kmeans1d", "kmeans1d_centroids", "sse"}


def test_nan_at_zero_weight_is_rejected():
    x = torch.tensor([0.0, float("nan"), 2.0])
    with pytest.raises(ValueError, match="finite"):
        kmeans1d(x, 2, sample_weight=torch.tensor([1.0, 0.0, 1.0]))


# --------------------------------------------------------------------------- #
# Sample weights
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("init", ["linear", "density"])
def test_zero_weight_entries_are_ignored(method, init):
    rng = np.random.default_rng(0)
    x = torch.tensor(rng.standard_normal(500), dtype=torch.float32)
    mask = torch.tensor(rng.random(500) < 0.3)
    # Pruned entries at extreme values would move min/max and the init.
    x = torch.where(mask, torch.tensor(50.0), x)
    w = (~mask).float()
    c, lab = kmeans1d(x, 8, init=init, method=method, sample_weight=w)
    c_ref, lab_ref = kmeans1d(x[~mask], 8, init=init, method=method)
    torch.testing.assert_close(c, c_ref)
    assert torch.equal(lab[~mask], lab_ref)
    check_contract(x, c, lab, w)
    assert (lab[mask] == len(c) - 1).all()  # 50.0 is nearest to the largest centroid


def test_integer_weights_equal_repeated_values():
    rng = np.random.default_rng(0)
    x = np.round(rng.standard_normal(60), 2)
    w = rng.integers(1, 5, 60)
    xt, wt = torch.tensor(x), torch.tensor(w, dtype=torch.float64)
    rep = torch.tensor(np.repeat(x, w))
    c1, l1 = kmeans1d(xt, 5, method="optimal", sample_weight=wt)
    c2, l2 = kmeans1d(rep, 5, method="optimal")
    torch.testing.assert_close(c1, c2, rtol=1e-9, atol=1e-12)
    assert sse(xt, c1, l1, wt) == pytest.approx(sse(rep, c2, l2), rel=1e-9)
    c3, _ = kmeans1d(xt, 5, sample_weight=wt, tol=0.0)
    c4, _ = kmeans1d(rep, 5, tol=0.0)
    torch.testing.assert_close(c3, c4, rtol=1e-9, atol=1e-12)


def test_weights_weight_the_means():
    x = torch.tensor([0.0, 1.0, 10.0], dtype=torch.float64)
    w = torch.tensor([3.0, 1.0, 1.0], dtype=torch.float64)
    c, _ = kmeans1d(x, 2, sample_weight=w)
    assert c.tolist() == [0.25, 10.0]


def test_equal_weights_change_nothing():
    rng = np.random.default_rng(0)
    x = torch.tensor(rng.standard_normal(1000))
    c1, l1 = kmeans1d(x, 16)
    c2, l2 = kmeans1d(x, 16, sample_weight=torch.full((1000,), 0.3, dtype=torch.float64))
    torch.testing.assert_close(c1, c2)
    assert torch.equal(l1, l2)


# --------------------------------------------------------------------------- #
# Weighted k-means with real-valued importances (calibrated quantization)
# --------------------------------------------------------------------------- #


def importance_weights(rng: np.random.Generator, shape, zero_frac: float = 0.2) -> np.ndarray:
    """Hessian-diagonal-like weights: lognormal over orders of magnitude, some exact zeros."""
    return rng.lognormal(0.0, 2.0, shape) * (rng.random(shape) >= zero_frac)


def weighted_lloyd_reference(x: np.ndarray, w: np.ndarray, k: int, steps: int):
    """Textbook weighted Lloyd from the linear init, on one row, in float64.

    Returns the centroids after every step (index 0: the init) and whether
    every partition on the way had k non-empty clusters. A value exactly on
    a midpoint goes to the lower cluster, as in kmeans1d.
    """
    xw = x[w > 0]
    lo, hi = xw.min(), xw.max()
    c = lo + (hi - lo) * (np.arange(k) / (k - 1))
    history, nonempty = [c], True
    for _ in range(steps):
        lab = np.searchsorted(0.5 * (c[1:] + c[:-1]), x, side="left")
        mass = np.bincount(lab, weights=w, minlength=k)
        nonempty &= bool((mass > 0).all())
        c = np.bincount(lab, weights=w * x, minlength=k) / np.where(mass > 0, mass, 1.0)
        history.append(c)
    return history, nonempty


def nearest_reference(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    return np.searchsorted(0.5 * (c[1:] + c[:-1]), x, side="left")


@pytest.mark.parametrize("batched", [False, True])
def test_weighted_lloyd_takes_the_textbook_steps(batched):
    # Before the first merge-and-split move (iteration 10), kmeans1d with
    # max_iter=t is t steps of textbook weighted Lloyd: same centroids, and
    # every entry (zero-weight ones too) labelled with its nearest centroid.
    rng = np.random.default_rng(11)
    rows, n, k = (6, 384, 8) if batched else (1, 3000, 8)
    x = rng.standard_normal((rows, n))
    w = importance_weights(rng, (rows, n))
    refs = [weighted_lloyd_reference(x[r], w[r], k, 10) for r in range(rows)]
    assert all(ok for _, ok in refs)  # the comparison needs no empty cluster
    xt, wt = torch.tensor(x), torch.tensor(w)
    compared = 0
    for t in range(1, 9):
        if batched:
            c, lab = kmeans1d(xt, k, max_iter=t, tol=0.0, sample_weight=wt)
        else:
            c, lab = kmeans1d(xt[0], k, max_iter=t, tol=0.0, sample_weight=wt[0])
            c, lab = c[None], lab[None]
        for r in range(rows):
            hist, _ = refs[r]
            if np.array_equal(
                nearest_reference(x[r], hist[t - 1]), nearest_reference(x[r], hist[t])
            ):
                continue  # converged before t: kmeans1d may have applied a move
            np.testing.assert_allclose(c[r].numpy(), hist[t], rtol=1e-11, atol=1e-13)
            assert np.array_equal(lab[r].numpy(), nearest_reference(x[r], c[r].numpy()))
            compared += 1
    assert compared >= 6 * rows  # most steps were compared, not skipped


@pytest.mark.parametrize("batched", [False, True])
@pytest.mark.parametrize("init", INITS)
def test_weighted_sse_decreases_over_lloyd_iterations(batched, init):
    rng = np.random.default_rng(5)
    shape = (8, 384) if batched else (6000,)
    x = torch.tensor(rng.laplace(size=shape))
    w = torch.tensor(importance_weights(rng, shape))
    errors = []
    for t in range(1, 41):
        g = torch.Generator().manual_seed(3)
        c, lab = kmeans1d(x, 16, init=init, max_iter=t, tol=0.0, sample_weight=w, generator=g)
        e = (
            w
            * (
                x
                - torch.gather(
                    c.reshape(-1, 16), 1, lab.reshape(len(c.reshape(-1, 16)), -1)
                ).reshape(shape)
            )
            ** 2
        )
        errors.append(e.reshape(-1, shape[-1]).sum(dim=1))
    errors = torch.stack(errors)  # (iterations, rows)
    assert (errors[1:] <= errors[:-1] * (1 + 1e-12) + 1e-15).all()
    if init != "dp":  # the DP seed may already be a fixed point of Lloyd
        assert (errors[-1] < errors[0]).all()  # and it did improve on every row


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("init", INITS)
def test_real_valued_weights_every_init_and_method(method, init):
    rng = np.random.default_rng(3 * INITS.index(init) + METHODS.index(method))
    rows, n, k = 5, 300 if method == "sklearn" else 600, 16
    x = torch.tensor(rng.standard_normal((rows, n)) * 0.05, dtype=torch.float32)
    w = torch.tensor(importance_weights(rng, (rows, n)), dtype=torch.float32)
    w[1] = 0.0  # a row with no weight at all
    x[2, :10] = 3.0  # far outliers of zero weight: outside every row's range
    w[2, :10] = 0.0
    g = torch.Generator().manual_seed(0)
    c, lab = kmeans1d(x, k, init=init, method=method, sample_weight=w, generator=g)
    check_contract(x[[0, 2, 3, 4]], c[[0, 2, 3, 4]], lab[[0, 2, 3, 4]], w[[0, 2, 3, 4]])
    assert (c[1] == 0).all() and (lab[1] == 0).all()
    assert (lab[2, :10] == k - 1).all()  # zero-weight entries: their nearest centroid
    for r in (0, 2, 4):
        g = torch.Generator().manual_seed(0)
        cr, lr = kmeans1d(x[r], k, init=init, method=method, sample_weight=w[r], generator=g)
        if init in ("linear", "density"):  # random inits draw differently per batch
            assert torch.equal(c[r], cr) and torch.equal(lab[r], lr)
        if method == "optimal":
            # Near-optimal for the weighted objective: better than the
            # unweighted clustering, measured weighted. (Plain Lloyd gives no
            # such guarantee: scikit-learn's weighted run ends worse here.)
            cu, lu = kmeans1d(x[r], k, init=init, method=method)
            assert sse(x[r], cr, lr, w[r]) < sse(x[r], cu, lu, w[r])


@pytest.mark.parametrize("seed", range(4))
def test_optimal_matches_brute_force_real_weights(seed):
    rng = np.random.default_rng(100 + seed)
    for _ in range(6):
        n = int(rng.integers(2, 11))
        k = int(rng.integers(1, 5))
        x = np.round(rng.standard_normal(n), 1)
        w = importance_weights(rng, n, zero_frac=0.25)
        w[0] = max(w[0], 1e-3)
        xt, wt = torch.tensor(x), torch.tensor(w)
        c, lab = kmeans1d(xt, k, method="optimal", sample_weight=wt)
        check_contract(xt, c, lab, wt)
        assert sse(xt, c, lab, wt) == pytest.approx(
            brute_force_optimum(x, k, w), rel=1e-9, abs=1e-12
        )


@pytest.mark.parametrize("method", ["lloyd", "optimal"])
def test_weights_scaled_by_a_power_of_two_change_nothing(method):
    # Only relative importance matters: exact scaling gives identical results.
    rng = np.random.default_rng(2)
    x = torch.tensor(rng.standard_normal((4, 500)), dtype=torch.float32)
    w = torch.tensor(importance_weights(rng, (4, 500)))
    ref = kmeans1d(x, 16, method=method, sample_weight=w)
    for scale in (2.0**-40, 2.0**30):
        got = kmeans1d(x, 16, method=method, sample_weight=w * scale)
        assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])


def test_weighted_per_channel_fixed_point():
    # Per-channel shape of a calibrated layer (rows x 384 values, 4 bits):
    # every centroid is the weighted mean of the entries labelled with it.
    rng = np.random.default_rng(4)
    x = torch.tensor(rng.standard_normal((64, 384)) * 0.02)
    w = torch.tensor(importance_weights(rng, (64, 384)))
    c, lab = kmeans1d(x, 16, tol=0.0, max_iter=10_000, sample_weight=w)
    mass = torch.zeros(64, 16, dtype=torch.float64).scatter_add_(1, lab, w)
    mean = torch.zeros(64, 16, dtype=torch.float64).scatter_add_(1, lab, w * x) / mass
    assert (mass > 0).all()
    torch.testing.assert_close(c, mean, rtol=1e-9, atol=1e-15)
    check_contract(x, c, lab, w)


def test_weighted_1d_with_a_million_entries():
    # Per-tensor shape: float32 weights, the fast sort path.
    rng = np.random.default_rng(6)
    x = torch.tensor(rng.laplace(size=1_000_000) * 0.02, dtype=torch.float32)
    w = torch.tensor(importance_weights(rng, 1_000_000), dtype=torch.float32)
    c, lab = kmeans1d(x, 16, sample_weight=w)
    assert c.shape == (16,) and (c[1:] > c[:-1]).all()
    mids = (c[1:].double() + c[:-1].double()) / 2
    assert torch.equal(lab, torch.searchsorted(mids, x.double(), right=False))
    assert (torch.bincount(lab[w > 0], minlength=16) > 0).all()


# --------------------------------------------------------------------------- #
# 2-D (batched) input
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("method", ["lloyd", "optimal", "sklearn"])
@pytest.mark.parametrize("init", ["linear", "density"])
def test_batched_equals_row_by_row(method, init):
    rng = np.random.default_rng(1)
    rows, n = (6, 3000) if method != "sklearn" else (2, 1000)
    x = torch.tensor(rng.laplace(size=(rows, n)), dtype=torch.float32)
    w = torch.tensor(rng.random((rows, n)) > 0.4, dtype=torch.float32)
    k = 64
    c, lab = kmeans1d(x, k, init=init, method=method, sample_weight=w)
    assert c.shape == (rows, k) and lab.shape == x.shape
    for r in range(rows):
        cr, lr = kmeans1d(x[r], k, init=init, method=method, sample_weight=w[r])
        torch.testing.assert_close(c[r], cr, rtol=0, atol=0)
        assert torch.equal(lab[r], lr)
    check_contract(x, c, lab, w)


def test_batched_rows_with_few_values_and_empty_rows():
    x = torch.tensor(
        [
            [0.0, 1.0, 2.0, 3.0, 4.0, 5.0],
            [7.0, 7.0, 7.0, 7.0, 7.0, 7.0],
            [1.0, 2.0, 1.0, 2.0, 1.0, 9.0],
            [3.0, 4.0, 5.0, 6.0, 7.0, 8.0],
        ]
    )
    w = torch.ones_like(x)
    w[3] = 0.0
    for method in METHODS:
        c, lab = kmeans1d(x, 4, method=method, sample_weight=w)
        assert c.shape == (4, 4)
        assert c[1].tolist() == [7.0] * 4
        assert c[2].tolist() == [1.0, 2.0, 9.0, 9.0]
        assert c[3].tolist() == [0.0] * 4
        assert lab[3].tolist() == [0] * 6
        assert lab[2].tolist() == [0, 1, 0, 1, 0, 2]
        check_contract(x[:3], c[:3], lab[:3])


def test_batched_k_eff_is_the_largest_row_count():
    x = torch.tensor([[0.0, 0.0, 1.0], [1.0, 2.0, 3.0]])
    c, lab = kmeans1d(x, 8)
    assert c.shape == (2, 3)
    assert c[0].tolist() == [0.0, 1.0, 1.0]
    assert lab[0].tolist() == [0, 0, 1]


def test_batched_all_rows_zero_weight():
    x = torch.randn(3, 5)
    c, lab = kmeans1d(x, 4, sample_weight=torch.zeros(3, 5))
    assert c.shape == (3, 1) and (c == 0).all() and (lab == 0).all()


# --------------------------------------------------------------------------- #
# Determinism, properties
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("init", ["random", "kmeans++"])
def test_random_inits_are_deterministic_per_generator(init):
    rng = np.random.default_rng(0)
    x = torch.tensor(rng.standard_normal((3, 2000)), dtype=torch.float32)
    runs = [
        kmeans1d(x, 16, init=init, generator=torch.Generator().manual_seed(s), max_iter=2)
        for s in (5, 5, 6)
    ]
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    assert not torch.equal(runs[0][0], runs[2][0])


def test_random_init_picks_distinct_weighted_values():
    x = torch.tensor([0.0, 1.0, 2.0, 3.0, 100.0, 101.0])
    w = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0, 0.0])
    for s in range(10):
        c, _ = kmeans1d(
            x,
            4,
            init="random",
            max_iter=1,
            sample_weight=w,
            generator=torch.Generator().manual_seed(s),
        )
        assert c.tolist() == [0.0, 1.0, 2.0, 3.0]


def test_deterministic_without_generator():
    rng = np.random.default_rng(0)
    x = torch.tensor(rng.laplace(size=20000), dtype=torch.float32)
    for method in ("lloyd", "optimal"):
        a = kmeans1d(x, 256, method=method)
        b = kmeans1d(x, 256, method=method)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    values=st.lists(st.floats(-100, 100, allow_nan=False, width=32), min_size=1, max_size=80),
    k=st.integers(1, 12),
    weighted=st.booleans(),
    init=st.sampled_from(["linear", "density", "kmeans++"]),
    data=st.data(),
)
def test_optimal_never_worse_than_lloyd(values, k, weighted, init, data):
    x = torch.tensor(values, dtype=torch.float32)
    w = None
    if weighted:
        ws = data.draw(
            st.lists(
                st.sampled_from([0.0, 0.5, 1.0, 3.0]), min_size=len(values), max_size=len(values)
            )
        )
        if not any(ws):
            ws[0] = 1.0
        w = torch.tensor(ws)
    g = torch.Generator().manual_seed(0)
    c_l, l_l = kmeans1d(x, k, init=init, sample_weight=w, generator=g)
    g = torch.Generator().manual_seed(0)
    c_o, l_o = kmeans1d(x, k, init=init, method="optimal", sample_weight=w, generator=g)
    check_contract(x, c_l, l_l, w)
    check_contract(x, c_o, l_o, w)
    e_l, e_o = sse(x, c_l, l_l, w), sse(x, c_o, l_o, w)
    assert e_o <= e_l * (1 + 1e-6) + 1e-9
    if len(values) <= 9:
        ref = brute_force_optimum(x.double().numpy(), k, None if w is None else w.double().numpy())
        assert e_o == pytest.approx(ref, rel=1e-4, abs=1e-6)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.integers(1, 4),
    n=st.integers(1, 200),
    k=st.integers(1, 40),
    decimals=st.integers(0, 2),
    seed=st.integers(0, 2**16),
)
def test_batched_contract_property(rows, n, k, decimals, seed):
    rng = np.random.default_rng(seed)
    x = torch.tensor(np.round(rng.standard_normal((rows, n)), decimals), dtype=torch.float32)
    w = torch.tensor(rng.random((rows, n)) > 0.3, dtype=torch.float32)
    for method in ("lloyd", "optimal"):
        c, lab = kmeans1d(x, k, method=method, sample_weight=w)
        check_contract(x, c, lab, w)
        for r in range(rows):
            if w[r].any():
                cr, lr = kmeans1d(x[r], k, method=method, sample_weight=w[r])
                assert torch.equal(c[r, : len(cr)], cr)
                assert torch.equal(lab[r], lr)


# --------------------------------------------------------------------------- #
# sse helper, quality sanity
# --------------------------------------------------------------------------- #


def test_sse_helper_float64_and_2d():
    x = torch.tensor([[0.0, 1.0], [2.0, 4.0]], dtype=torch.float32)
    c = torch.tensor([[0.0, 1.0], [3.0, 5.0]], dtype=torch.float32)
    lab = torch.tensor([[0, 0], [0, 0]])
    assert sse(x, c, lab) == 1.0 + 1.0 + 1.0
    assert sse(x, c, lab, torch.tensor([[1.0, 2.0], [0.0, 1.0]])) == 2.0 + 1.0
    with pytest.raises(ValueError, match="centroids"):
        sse(x, c[0], lab)


def test_quality_at_8_bits():
    # Deep Compression's setting: 8 bits on Laplace-like weights.
    rng = np.random.default_rng(0)
    x = torch.tensor(rng.laplace(size=50_000) * 0.02, dtype=torch.float32)
    c_l, l_l = kmeans1d(x, 256)
    c_o, l_o = kmeans1d(x, 256, method="optimal")
    c_s, l_s = kmeans1d(x, 256, method="sklearn")
    e_l, e_o, e_s = sse(x, c_l, l_l), sse(x, c_o, l_o), sse(x, c_s, l_s)
    assert e_o <= e_l
    assert e_l <= 1.001 * e_s
    for c, lab in ((c_l, l_l), (c_o, l_o), (c_s, l_s)):
        assert c.shape == (256,)
        assert torch.bincount(lab, minlength=256).min() > 0


# --------------------------------------------------------------------------- #
# Regression: fixed outputs (main's kmeans.py before the split gave the same)
# --------------------------------------------------------------------------- #

_RX = [-1.5, -0.25, 0.0, 0.0, 0.1, 0.3, 0.3, 0.9, 1.0, 2.5, 4.0, 4.0, 7.0, -3.0, 0.6, 1.7]
_RW = [0.5, 2.0, 1.0, 0.0, 3.0, 0.25, 1.0, 1.5, 0.0, 2.0, 0.75, 1.0, 0.125, 0.0, 4.0, 1.0]
_L_INIT = [0, 0, 0, 0, 0, 0, 0, 1, 1, 2, 2, 2, 3, 0, 1, 1]
_L_OPT = [0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 3, 3, 3, 0, 1, 2]
_C_OPT = [-0.14615384615384608, 0.6111111111111112, 2.2333333333333334, 4.2]


@pytest.mark.parametrize(
    ("init", "method", "max_iter", "centroids", "labels"),
    [
        (
            "linear",
            "lloyd",
            1,
            [-0.5000000000000001, 0.8090909090909091, 3.9999999999999996, 6.999999999999998],
            [0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 3, 0, 1, 1],
        ),
        (
            "linear",
            "lloyd",
            300,
            [-0.0741935483870968, 0.8384615384615385, 3.2, 6.999999999999998],
            _L_INIT,
        ),
        ("linear", "optimal", 300, _C_OPT, _L_OPT),
        (
            "density",
            "lloyd",
            1,
            [-0.3571428571428572, 0.1588235294117648, 0.6818181818181819, 2.9897435897435893],
            [0, 0, 1, 1, 1, 1, 1, 2, 2, 3, 3, 3, 3, 0, 2, 2],
        ),
        (
            "density",
            "lloyd",
            300,
            [-0.0741935483870968, 0.6818181818181819, 2.2333333333333334, 4.2],
            [0, 0, 0, 0, 0, 0, 0, 1, 1, 2, 3, 3, 3, 0, 1, 2],
        ),
        ("density", "optimal", 300, _C_OPT, _L_OPT),
        (
            "random",
            "lloyd",
            1,
            [-0.5000000000000001, 0.12857142857142861, 0.8384615384615385, 3.32258064516129],
            [0, 0, 1, 1, 1, 1, 1, 2, 2, 3, 3, 3, 3, 0, 2, 2],
        ),
        (
            "random",
            "lloyd",
            300,
            [-0.0741935483870968, 0.6818181818181819, 2.2333333333333334, 4.2],
            [0, 0, 0, 0, 0, 0, 0, 1, 1, 2, 3, 3, 3, 0, 1, 2],
        ),
        ("random", "optimal", 300, _C_OPT, _L_OPT),
        (
            "kmeans++",
            "lloyd",
            1,
            [0.23962264150943396, 2.2333333333333334, 3.9999999999999996, 6.999999999999998],
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 2, 3, 0, 0, 1],
        ),
        ("kmeans++", "lloyd", 300, _C_OPT, _L_OPT),
        ("kmeans++", "optimal", 300, _C_OPT, _L_OPT),
    ],
)
def test_regression_small_weighted(init, method, max_iter, centroids, labels):
    x, w = torch.tensor(_RX, dtype=torch.float64), torch.tensor(_RW, dtype=torch.float64)
    g = torch.Generator().manual_seed(7)
    c, lab = kmeans.kmeans1d(
        x, 4, init=init, method=method, max_iter=max_iter, sample_weight=w, generator=g
    )
    assert c.tolist() == centroids  # bitwise: float64 reprs round-trip
    assert lab.tolist() == labels


def test_regression_small_batched():
    x = torch.tensor(_RX, dtype=torch.float64).reshape(2, 8)
    w = torch.tensor(_RW, dtype=torch.float64).reshape(2, 8)
    c, lab = kmeans.kmeans1d(x, 3, sample_weight=w)
    assert c.tolist() == [
        [-1.5, -0.033333333333333326, 0.6272727272727273],
        [0.8200000000000003, 3.2, 7.0],
    ]
    assert lab.tolist() == [[0, 1, 1, 1, 1, 2, 2, 2], [0, 1, 1, 1, 2, 0, 0, 0]]


def _digest(c: torch.Tensor, lab: torch.Tensor) -> str:
    bits = c.view(torch.int16) if c.dtype == torch.bfloat16 else c.contiguous().view(torch.uint8)
    h = hashlib.sha256(bits.numpy().tobytes())
    h.update(lab.numpy().tobytes())
    return h.hexdigest()[:16]


@pytest.mark.parametrize(
    ("shape", "dtype", "weighted", "seed", "k", "init", "method", "digest"),
    [
        ((5000,), torch.float32, True, 1, 16, "linear", "lloyd", "e03b8311fe83d278"),
        ((5000,), torch.float32, False, 2, 256, "linear", "lloyd", "8fe7303292f60941"),
        ((5000,), torch.float64, True, 3, 256, "density", "optimal", "92eb1952984ea039"),
        ((20000,), torch.float16, False, 4, 64, "kmeans++", "lloyd", "0380645bab5b90c2"),
        ((3000,), torch.float32, True, 5, 32, "random", "optimal", "ee2a96ec288b8937"),
        ((48, 384), torch.float32, True, 6, 16, "linear", "lloyd", "52d9a7b8df42238c"),
        ((48, 384), torch.float32, True, 7, 16, "linear", "optimal", "81022deb30e4156d"),
        ((16, 384), torch.bfloat16, False, 8, 256, "density", "lloyd", "567e302935bad125"),
        ((16, 1000), torch.float32, True, 9, 4, "kmeans++", "lloyd", "a093df54f77bde1f"),
        ((16, 1000), torch.float64, False, 10, 1, "random", "optimal", "2e3db5e2819e23d6"),
    ],
)
def test_regression_digests(shape, dtype, weighted, seed, k, init, method, digest):
    # Bit-exact outputs (sha256 of centroid bytes and labels) of larger cases,
    # recorded from the single-module kmeans.py this package replaced. A
    # change here is a change of results: make it on purpose, never by accident.
    rng = np.random.default_rng(seed)
    x = torch.tensor(rng.laplace(size=shape) * 0.02).to(dtype)
    w = torch.tensor(rng.lognormal(0, 1.5, shape) * (rng.random(shape) > 0.2)) if weighted else None
    g = torch.Generator().manual_seed(seed)
    c, lab = kmeans1d(x, k, init=init, method=method, sample_weight=w, generator=g)
    assert _digest(c, lab) == digest


# -- the numba DP gives the numpy DP's cuts, bit for bit ---------------------------------------
@pytest.mark.parametrize("seed", range(6))
def test_numba_dp_gives_the_same_cuts_as_the_numpy_dp(seed, monkeypatch):
    from torchprune_share.kmeans import kernels, optimal
    from torchprune_share.kmeans.rows import SortedRows, sort_rows

    if not kernels.AVAILABLE:
        pytest.skip("numba is not installed")
    rng = np.random.default_rng(seed)
    for trial in range(40):
        B, n, k = int(rng.integers(1, 6)), int(rng.integers(2, 700)), int(rng.integers(1, 20))
        x = rng.standard_normal((B, n))
        if trial % 3 == 0:
            x = np.round(x * 3) / 3  # many equal values: ties between cut positions
        w = None if trial % 2 else rng.random((B, n)) * (rng.random((B, n)) > 0.2)
        rows = SortedRows(*sort_rows(x, w, False))
        grid = optimal._grid(rows, optimal._grid_size(rows.L, k))
        fast = optimal._optimal_cuts(rows, grid, k)
        slow = optimal._optimal_cuts(rows, grid, k, use_kernel=False)
        assert np.array_equal(fast, slow), (trial, B, n, k)
    # And through the public function, with numba switched off.
    t = torch.from_numpy(rng.standard_normal((8, 3000)))
    got = kmeans1d(t, 16, method="optimal")
    monkeypatch.setattr(kernels, "AVAILABLE", False)
    want = kmeans1d(t, 16, method="optimal")
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_without_numba_the_optimal_dp_runs_on_numpy():
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(
        """
        import sys
        sys.modules["numba"] = None  # makes `import numba` raise ImportError
        import torch
        from torchprune_share.kmeans import kernels, kmeans1d
        c, l = kmeans1d(torch.tensor([0.0, 0.1, 0.9, 1.0, 5.0]), 2, method="optimal")
        print(kernels.AVAILABLE, c.tolist(), l.tolist())
        """
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.split(maxsplit=1) == ["False", "[0.5, 5.0] [0, 0, 0, 0, 1]\n"]


def test_dp_init_is_the_exact_optimum_on_rows_with_few_distinct_values():
    # Up to 128 distinct values the seed's grid holds every boundary, so its DP is exact
    # and Lloyd cannot move it: the same SSE as method="optimal" (exact there too).
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 120, (6, 400), generator=g).to(torch.float64) / 7
    w = torch.rand(6, 400, generator=g, dtype=torch.float64) + 0.01
    for k in (3, 8, 16):
        c_dp, l_dp = kmeans1d(x, k, init="dp", sample_weight=w)
        c_opt, l_opt = kmeans1d(x, k, method="optimal", sample_weight=w)
        for r in range(6):
            e_dp = sse(x[r], c_dp[r], l_dp[r], w[r])
            e_opt = sse(x[r], c_opt[r], l_opt[r], w[r])
            assert e_dp == pytest.approx(e_opt, rel=1e-9)


def test_dp_init_lands_near_the_optimum_where_lloyd_does_not():
    # Heavy-tailed rows with skewed weights, as Hessian-weighted weights are: Lloyd from
    # the linear init stalls in a local minimum, the DP seed starts in the right basin.
    g = torch.Generator().manual_seed(0)
    x = torch.distributions.StudentT(3.0).sample((64, 1536)).to(torch.float64)
    w = torch.rand(64, 1536, generator=g, dtype=torch.float64) ** 4 + 1e-3
    total = {}
    for name, kw in {
        "linear": {},
        "dp": {"init": "dp"},
        "optimal": {"method": "optimal"},
    }.items():
        c, labels = kmeans1d(x, 16, sample_weight=w, max_iter=30, **kw)
        total[name] = sse(x, c, labels, w)
    assert total["dp"] <= total["optimal"] * 1.005
    assert total["dp"] < total["linear"] * 0.99


def test_dp_init_needs_no_generator_and_clusters_rows_alone_as_in_a_batch():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 700, generator=g)
    c, labels = kmeans1d(x, 8, init="dp")
    again = kmeans1d(x, 8, init="dp")
    assert torch.equal(c, again[0]) and torch.equal(labels, again[1])
    for r in range(5):
        c_r, l_r = kmeans1d(x[r], 8, init="dp")
        assert torch.equal(c_r, c[r]) and torch.equal(l_r, labels[r])


# -- kmeans1d_centroids: kmeans1d's centroids, bitwise, without the labels --------------------
@pytest.mark.parametrize("init", ["linear", "density", "dp", "kmeans++"])
@pytest.mark.parametrize("method", ["lloyd", "optimal"])
def test_centroids_only_are_kmeans1d_centroids_bitwise(init, method):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(37, 200, generator=g) ** 3
    x[5] = 0.25  # one distinct value: fewer than k, padded
    x[6, :3] = torch.tensor([1.0, 2.0, 3.0])
    x[6, 3:] = 1.0
    w = torch.rand(37, 200, generator=g)
    w[7] = 0.0  # a row of zero weights
    for xi, wi in ((x, w), (x, None), (x[0], w[0])):
        kw = dict(init=init, method=method, sample_weight=wi, max_iter=30)
        want, _ = kmeans1d(xi, 16, generator=torch.Generator().manual_seed(1), **kw)
        got = kmeans1d_centroids(xi, 16, generator=torch.Generator().manual_seed(1), **kw)
        assert got.dtype == want.dtype and torch.equal(got, want)
    with pytest.raises(ValueError, match="k"):
        kmeans1d_centroids(x, 0)


# -- values closer than float64 resolves around the row's shift ----------------------------------
@pytest.mark.parametrize("method", ["lloyd", "optimal"])
def test_values_float64_cannot_separate_still_give_a_near_optimal_clustering(method):
    # Found by hypothesis: shifted by the row median (1.0), 0, 6e-19 and 3e-17 are one run
    # that Lloyd cannot split; the repair once kept the 7 smallest values and left 4 to 3.
    x = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0, 2.8550850217594546e-17, 6.312858387318414e-19, -1.0])
    c, labels = kmeans1d(x, 7, method=method)
    check_contract(x, c, labels, None)
    ref = brute_force_optimum(x.double().numpy(), 7, None)
    assert sse(x, c, labels) == pytest.approx(ref, abs=1e-30)
    assert {-1.0, 1.0, 2.0, 3.0, 4.0} <= set(c.tolist())
