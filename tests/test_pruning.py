"""Level (magnitude) pruning: exact counts, torch.nn.utils.prune integration, bad input."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils import parametrize, prune

from torchprune_share import (
    LevelPruningMethod,
    PruningMask,
    SigmaThresholdPruningMethod,
    global_level_prune,
    level_prune,
    sigma_prune,
)
from torchprune_share.pruning import amount_to_count, smallest_k

FAST = settings(max_examples=25, deadline=None)

BAD_AMOUNTS = [
    (-0.1, ValueError, r"amount must be a float in \[0, 1\]"),
    (1.01, ValueError, r"amount must be a float in \[0, 1\]"),
    (float("nan"), ValueError, r"amount must be a float in \[0, 1\]"),
    (-1, ValueError, "amount must be a non-negative int"),
    (21, ValueError, r"amount=21 must be at most the number of unpruned entries \(20\)"),
    ("0.5", TypeError, "amount must be a float in .* or a non-negative int, got str"),
    (None, TypeError, "amount must be .*got NoneType"),
    (True, TypeError, "amount must be .*got bool"),
]


def zeros(t: torch.Tensor) -> int:
    return int((t == 0).sum())


def linear_with(weight: torch.Tensor) -> nn.Linear:
    lin = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        lin.weight.copy_(weight)
    return lin


def assert_smallest_pruned(dense: torch.Tensor, pruned: torch.Tensor) -> None:
    """Every pruned entry is at most as large in magnitude as every kept one."""
    mask = pruned != 0
    if mask.all() or not mask.any():
        return
    assert dense.abs()[~mask].max() <= dense.abs()[mask].min()


# -- LevelPruningMethod (torch's hook mechanism) ----------------------------------------
@FAST
@given(
    rows=st.integers(1, 12),
    cols=st.integers(1, 12),
    amount=st.floats(0.0, 1.0),
)
def test_method_float_amount_prunes_round_amount_n(rows, cols, amount):
    lin = nn.Linear(cols, rows)
    dense = lin.weight.detach().clone()
    LevelPruningMethod.apply(lin, "weight", amount=amount)
    n = rows * cols
    assert zeros(lin.weight) == round(amount * n)
    assert zeros(lin.weight_mask) == round(amount * n)
    assert_smallest_pruned(dense, lin.weight)
    # Kept entries keep their exact values.
    assert torch.equal(lin.weight[lin.weight_mask.bool()], dense[lin.weight_mask.bool()])


@FAST
@given(rows=st.integers(1, 10), cols=st.integers(1, 10), data=st.data())
def test_method_int_amount_is_a_count(rows, cols, data):
    count = data.draw(st.integers(0, rows * cols))
    lin = nn.Linear(cols, rows)
    LevelPruningMethod.apply(lin, "weight", amount=count)
    assert zeros(lin.weight) == count


def test_method_ties_exact_count_first_positions():
    lin = linear_with(torch.full((4, 5), 0.5))
    LevelPruningMethod.apply(lin, "weight", amount=0.3)  # round(6.0) = 6 of 20 equal values
    assert zeros(lin.weight) == 6
    # Deterministic tie-break: the lowest flat indices go first.
    assert (lin.weight.reshape(-1)[:6] == 0).all() and (lin.weight.reshape(-1)[6:] != 0).all()


def test_method_ties_at_threshold_partial():
    w = torch.tensor([[0.1, 0.3, 0.3, 0.3, 0.9, 0.3]])
    lin = linear_with(w)
    LevelPruningMethod.apply(lin, "weight", amount=3)
    assert lin.weight_mask.tolist() == [[0.0, 0.0, 0.0, 1.0, 1.0, 1.0]]


def test_method_matches_torch_l1_without_ties():
    w = torch.randn(30, 40)
    a, b = linear_with(w), linear_with(w)
    LevelPruningMethod.apply(a, "weight", amount=0.37)
    prune.l1_unstructured(b, "weight", amount=0.37)
    assert torch.equal(a.weight_mask, b.weight_mask)


def test_method_iterative_through_pruning_container():
    lin = nn.Linear(20, 10)
    first = LevelPruningMethod.apply(lin, "weight", amount=0.5)
    mask1 = lin.weight_mask.clone()
    container = LevelPruningMethod.apply(lin, "weight", amount=0.5)
    assert isinstance(container, prune.PruningContainer)
    assert container._pruning_methods[0] is first
    assert zeros(lin.weight) == 150  # 100 + round(0.5 * 100)
    assert bool((lin.weight_mask <= mask1).all())  # earlier zeros stay
    # The third step counts among the 50 survivors: 0.2 * 50 = 10.
    LevelPruningMethod.apply(lin, "weight", amount=0.2)
    assert zeros(lin.weight) == 160
    # Mixed with a torch method in the same container.
    prune.l1_unstructured(lin, "weight", amount=4)
    assert zeros(lin.weight) == 164


def test_method_is_pruned_and_remove():
    net = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 2))
    assert not prune.is_pruned(net)
    LevelPruningMethod.apply(net[0], "weight", amount=0.25)
    assert prune.is_pruned(net)
    pruned_value = net[0].weight.detach().clone()
    prune.remove(net[0], "weight")
    assert not prune.is_pruned(net)
    assert type(net[0].weight) is nn.Parameter
    assert torch.equal(net[0].weight, pruned_value)
    assert zeros(net[0].weight) == 16
    assert sorted(net[0].state_dict()) == ["bias", "weight"]
    assert not net[0]._forward_pre_hooks


def test_method_importance_scores():
    lin = nn.Linear(5, 4)
    scores = torch.arange(20.0).flip(0).reshape(4, 5)  # the last entries are least important
    LevelPruningMethod.apply(lin, "weight", amount=7, importance_scores=scores)
    assert lin.weight_mask.reshape(-1).tolist() == [1.0] * 13 + [0.0] * 7


def test_method_compute_mask_respects_default_mask():
    t = torch.tensor([5.0, 0.1, 4.0, 3.0, 0.2, 6.0])
    default = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 1.0])
    mask = LevelPruningMethod(0.5).compute_mask(t, default)
    # 2 of the 4 unmasked: 3.0 and 4.0 go; the already-masked small ones stay masked.
    assert mask.tolist() == [1.0, 0.0, 0.0, 0.0, 0.0, 1.0]
    assert mask.dtype == default.dtype


def test_global_unstructured_with_level_method():
    a, b = nn.Linear(10, 10), nn.Linear(20, 5)
    with torch.no_grad():
        b.weight.mul_(3)  # different scales: a global threshold prunes them unevenly
    dense = torch.cat([a.weight.detach().reshape(-1), b.weight.detach().reshape(-1)])
    prune.global_unstructured(
        [(a, "weight"), (b, "weight")], pruning_method=LevelPruningMethod, amount=0.6
    )
    pruned = torch.cat([a.weight.detach().reshape(-1), b.weight.detach().reshape(-1)])
    assert zeros(pruned) == 120
    assert zeros(a.weight) != zeros(b.weight)
    assert_smallest_pruned(dense, pruned)  # one threshold across both tensors
    # Same masks as torch's own L1 method (random data: no ties).
    c, d = nn.Linear(10, 10), nn.Linear(20, 5)
    c.load_state_dict({"weight": a.weight_orig, "bias": a.bias})
    d.load_state_dict({"weight": b.weight_orig, "bias": b.bias})
    prune.global_unstructured(
        [(c, "weight"), (d, "weight")], pruning_method=prune.L1Unstructured, amount=0.6
    )
    assert torch.equal(c.weight_mask, a.weight_mask) and torch.equal(d.weight_mask, b.weight_mask)
    # An int amount and a second round (only still-unmasked entries count).
    prune.global_unstructured(
        [(a, "weight"), (b, "weight")], pruning_method=LevelPruningMethod, amount=30
    )
    assert zeros(a.weight) + zeros(b.weight) == 150


@pytest.mark.parametrize(("amount", "exc", "match"), BAD_AMOUNTS)
def test_method_bad_amount_leaves_module_unchanged(unchanged, amount, exc, match):
    lin = nn.Linear(5, 4)
    with unchanged(lin), pytest.raises(exc, match=match):
        LevelPruningMethod.apply(lin, "weight", amount=amount)
    # Already pruned (one hook, then a container): the count is checked against the
    # 15 (then 10) unmasked entries, before torch moves anything.
    LevelPruningMethod.apply(lin, "weight", amount=5)
    with unchanged(lin), pytest.raises(exc):
        LevelPruningMethod.apply(lin, "weight", amount=amount if amount != 21 else 16)
    LevelPruningMethod.apply(lin, "weight", amount=5)
    with unchanged(lin), pytest.raises(exc):
        LevelPruningMethod.apply(lin, "weight", amount=amount if amount != 21 else 11)
    a, b = nn.Linear(2, 5), nn.Linear(2, 5)
    with unchanged(a), unchanged(b), pytest.raises(exc, match=match):
        prune.global_unstructured(
            [(a, "weight"), (b, "weight")], pruning_method=LevelPruningMethod, amount=amount
        )


def test_sigma_threshold_counts():
    lin = nn.Linear(50, 40)
    w = lin.weight.detach().clone()
    SigmaThresholdPruningMethod.apply(lin, "weight", q=0.7)
    expected = int((w.abs() < 0.7 * w.double().std()).sum())
    assert zeros(lin.weight) == expected
    lin2 = linear_with(w)
    sigma_prune(lin2, "weight", q=0.7)
    assert torch.equal(lin2.weight == 0, lin.weight == 0)


# -- level_prune (parametrization) ---------------------------------------------------------
@FAST
@given(
    shape=st.lists(st.integers(1, 7), min_size=1, max_size=4),
    amount=st.floats(0.0, 1.0),
)
def test_level_prune_exact_count_any_shape(shape, amount):
    module = nn.Module()
    module.w = nn.Parameter(torch.randn(*shape))
    dense = module.w.detach().clone()
    level_prune(module, "w", amount=amount)
    n = dense.numel()
    assert zeros(module.w) == round(amount * n)
    assert_smallest_pruned(dense, module.w.detach())
    kept = module.w != 0
    assert torch.equal(module.w[kept], dense[kept])
    reparam = module.parametrizations.w[0]
    assert isinstance(reparam, PruningMask) and reparam.mask.dtype == torch.bool
    assert torch.equal(reparam.mask, kept)
    assert torch.equal(module.parametrizations.w.original, dense)  # the dense master is intact


def test_level_prune_twice_prunes_further():
    lin = nn.Linear(100, 10)
    level_prune(lin, amount=0.8)
    first = lin.weight == 0
    assert zeros(lin.weight) == 800
    level_prune(lin, amount=0.5)
    assert zeros(lin.weight) == 900  # 800 + round(0.5 * 200)
    assert bool((lin.weight == 0)[first].all())
    assert len(lin.parametrizations.weight) == 1  # still one parametrization


def test_level_prune_int_amounts_and_extremes():
    lin = nn.Linear(6, 5)
    level_prune(lin, amount=0)
    assert zeros(lin.weight) == 0
    level_prune(lin, amount=7)
    assert zeros(lin.weight) == 7
    level_prune(lin, amount=23)  # all of the remaining 23
    assert zeros(lin.weight) == 30
    lin = nn.Linear(6, 5)
    level_prune(lin, amount=1.0)
    assert zeros(lin.weight) == 30


def test_level_prune_ties_all_equal():
    lin = linear_with(torch.full((3, 7), -0.25))
    level_prune(lin, amount=0.5)  # round(10.5) = 10 (half to even, as torch)
    assert zeros(lin.weight) == 10
    assert (lin.weight.reshape(-1)[:10] == 0).all() and (lin.weight.reshape(-1)[10:] != 0).all()
    assert amount_to_count(0.5, 21) == round(0.5 * 21) == 10


def test_level_prune_importance_scores():
    lin = nn.Linear(4, 3)
    scores = -torch.arange(12.0).reshape(3, 4)  # magnitude is taken: the first are smallest
    level_prune(lin, amount=5, importance_scores=scores)
    assert (lin.weight == 0).reshape(-1).tolist() == [True] * 5 + [False] * 7


def test_level_prune_gradient_is_masked():
    lin = nn.Linear(6, 4)
    level_prune(lin, amount=0.5)
    x = torch.randn(3, 6)
    lin(x).pow(2).sum().backward()
    grad = lin.parametrizations.weight.original.grad
    mask = lin.parametrizations.weight[0].mask
    assert bool((grad[~mask] == 0).all()) and bool((grad[mask] != 0).all())
    # The masked entries read +0.0, never -0.0.
    assert not torch.signbit(lin.weight[~mask]).any()


def test_level_prune_adopts_torch_hook():
    lin = nn.Linear(10, 10)
    prune.l1_unstructured(lin, "weight", amount=0.4)
    torch_zeros = lin.weight == 0
    level_prune(lin, amount=0.5)
    assert zeros(lin.weight) == 70  # 40 + round(0.5 * 60)
    assert bool((lin.weight == 0)[torch_zeros].all())
    assert not lin._forward_pre_hooks and not prune.is_pruned(lin)
    assert sorted(lin.state_dict()) == [
        "bias",
        "parametrizations.weight.0.mask",
        "parametrizations.weight.original",
    ]


def test_level_prune_bias_and_custom_name():
    module = nn.Linear(10, 10)
    module.scale = nn.Parameter(torch.randn(7, 3))
    level_prune(module, "bias", amount=0.3)
    level_prune(module, "scale", amount=0.5)
    assert zeros(module.bias) == 3 and zeros(module.scale) == 10


def test_global_level_prune_single_threshold():
    a, b, c = nn.Linear(10, 10), nn.Conv2d(2, 3, 3), nn.Embedding(7, 5)
    with torch.no_grad():
        b.weight.mul_(4)
    params = [(a, "weight"), (b, "weight"), (c, "weight")]
    dense = torch.cat([getattr(m, n).detach().reshape(-1) for m, n in params])
    global_level_prune(params, amount=0.5)
    pruned = torch.cat([getattr(m, n).detach().reshape(-1) for m, n in params])
    total = dense.numel()
    assert zeros(pruned) == round(0.5 * total)
    assert_smallest_pruned(dense, pruned)
    # Same masks as torch's global_unstructured with L1 (no ties in random data).
    ref = [nn.Linear(10, 10), nn.Conv2d(2, 3, 3), nn.Embedding(7, 5)]
    for r, (m, _) in zip(ref, params):
        with torch.no_grad():
            r.weight.copy_(m.parametrizations.weight.original)
    prune.global_unstructured(
        [(r, "weight") for r in ref], pruning_method=prune.L1Unstructured, amount=0.5
    )
    for r, (m, _) in zip(ref, params):
        assert torch.equal(r.weight_mask.bool(), m.parametrizations.weight[0].mask)
    # A second global round counts only the survivors.
    global_level_prune(params, amount=10)
    assert sum(zeros(getattr(m, n)) for m, n in params) == round(0.5 * total) + 10


def test_global_level_prune_importance_scores():
    a, b = nn.Linear(4, 2), nn.Linear(4, 2)
    scores = {(a, "weight"): torch.zeros(2, 4), (b, "weight"): torch.ones(2, 4)}
    global_level_prune([(a, "weight"), (b, "weight")], amount=8, importance_scores=scores)
    assert zeros(a.weight) == 8 and zeros(b.weight) == 0


def test_smallest_k_is_exact_with_ties():
    s = torch.tensor([2.0, 1.0, 1.0, 1.0, 0.5, math.inf])
    assert smallest_k(s, 3).tolist() == [False, True, True, False, True, False]
    assert smallest_k(s, 0).sum() == 0 and smallest_k(s, 6).all()
    half = torch.tensor([1.0, 0.5, 0.25], dtype=torch.bfloat16)
    assert smallest_k(half, 1).tolist() == [False, False, True]


# -- bad input: a clear error, and the module exactly as before ------------------------


@pytest.mark.parametrize(("amount", "exc", "match"), BAD_AMOUNTS)
def test_level_prune_bad_amount(unchanged, amount, exc, match):
    lin = nn.Linear(5, 4)
    with unchanged(lin), pytest.raises(exc, match=match):
        level_prune(lin, amount=amount)
    level_prune(lin, amount=0.25)  # a pruned module is also left alone
    with unchanged(lin), pytest.raises(exc):
        level_prune(lin, amount=amount if amount != 21 else 16)


@pytest.mark.parametrize(("amount", "exc", "match"), BAD_AMOUNTS)
def test_global_level_prune_bad_amount(unchanged, amount, exc, match):
    net = nn.Sequential(nn.Linear(2, 5), nn.Linear(2, 5))
    with unchanged(net), pytest.raises(exc, match=match):
        global_level_prune([(net[0], "weight"), (net[1], "weight")], amount=amount)


def test_level_prune_name_not_a_float_parameter(unchanged):
    bn = nn.BatchNorm1d(4)
    with unchanged(bn), pytest.raises(ValueError, match=r"name='running_mean' is not a parameter"):
        level_prune(bn, "running_mean", amount=0.5)
    lin = nn.Linear(3, 3)
    with unchanged(lin), pytest.raises(ValueError, match=r"expected one of \['bias', 'weight'\]"):
        level_prune(lin, "wieght", amount=0.5)
    lin.codes = nn.Parameter(torch.arange(6).reshape(2, 3), requires_grad=False)
    with unchanged(lin), pytest.raises(TypeError, match="name='codes' must name a floating-point"):
        level_prune(lin, "codes", amount=0.5)
    with unchanged(lin), pytest.raises(TypeError, match="name must be a str"):
        level_prune(lin, 3, amount=0.5)
    with pytest.raises(TypeError, match=r"module must be an nn\.Module"):
        level_prune(torch.zeros(3), "weight", amount=0.5)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_level_prune_non_finite_weight(unchanged, bad):
    lin = nn.Linear(3, 3)
    with torch.no_grad():
        lin.weight[1, 2] = bad
    with unchanged(lin), pytest.raises(ValueError, match=r"Linear\.weight contains NaN or Inf"):
        level_prune(lin, amount=0.5)
    with unchanged(lin), pytest.raises(ValueError, match="NaN or Inf"):
        global_level_prune([(lin, "weight")], amount=0.5)


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")
def test_level_prune_empty_tensor(unchanged):
    lin = nn.Linear(0, 3)
    with unchanged(lin), pytest.raises(ValueError, match="name='weight' names an empty tensor"):
        level_prune(lin, amount=0.5)


def test_level_prune_bad_importance_scores(unchanged):
    lin = nn.Linear(3, 2)
    with (
        unchanged(lin),
        pytest.raises(ValueError, match=r"importance_scores must be a tensor of shape \(2, 3\)"),
    ):
        level_prune(lin, amount=0.5, importance_scores=torch.ones(3, 2))
    with unchanged(lin), pytest.raises(ValueError, match="importance_scores contains NaN"):
        level_prune(lin, amount=0.5, importance_scores=torch.full((2, 3), math.nan))
    with unchanged(lin), pytest.raises(ValueError, match="importance_scores for 'weight' must be"):
        global_level_prune(
            [(lin, "weight")], 0.5, importance_scores={(lin, "weight"): torch.ones(1)}
        )


def test_global_level_prune_bad_parameters(unchanged):
    lin = nn.Linear(3, 2)
    with pytest.raises(ValueError, match="parameters must name at least one"):
        global_level_prune([], amount=0.5)
    with unchanged(lin), pytest.raises(ValueError, match=r"names .*'weight'.* twice"):
        global_level_prune([(lin, "weight"), (lin, "weight")], amount=0.5)
    with (
        unchanged(lin),
        pytest.raises(TypeError, match=r"parameters must hold \(module, name\) pairs"),
    ):
        global_level_prune([lin], amount=0.5)
    other = nn.Linear(2, 2)
    other.register_buffer("table", torch.ones(2))
    # The second pair is bad: the first must not be pruned either.
    with unchanged(lin), unchanged(other), pytest.raises(ValueError, match="name='table'"):
        global_level_prune([(lin, "weight"), (other, "table")], amount=0.5)


def test_level_prune_refuses_foreign_parametrization(unchanged):
    class Double(nn.Module):
        def forward(self, x):
            return 2 * x

    lin = nn.Linear(3, 3)
    parametrize.register_parametrization(lin, "weight", Double())
    with unchanged(lin), pytest.raises(ValueError, match="foreign parametrization"):
        level_prune(lin, amount=0.5)


def test_sigma_bad_q():
    with pytest.raises(ValueError, match="q must be a finite float >= 0"):
        SigmaThresholdPruningMethod(-1.0)
    with pytest.raises(TypeError, match="q must be a non-negative float"):
        SigmaThresholdPruningMethod("1")
