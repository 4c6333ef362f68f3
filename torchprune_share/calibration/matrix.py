r"""Calibrated compression of one 2-D weight from its statistics (no ``nn.Module``).

Three algorithms, the ``algorithm`` setting of :class:`~torchprune_share.SharingConfig`
and :class:`~torchprune_share.LevelPruner`:

* ``"hessian"`` (default): sharing fits codebooks by k-means weighing input column j by
  ``sqrt(H_jj / [H⁻¹]_jj)`` (between the cost of its error uncompensated and fully
  compensated), then assigns codes in a GPTQ column sweep (error feedback through
  ``H⁻¹``, columns in order of decreasing ``diag H``) and refits the centroids by least
  squares under ``H``, keeping the best; pruning is the SparseGPT sweep (mask
  chosen per block, survivors updated to compensate), whose survivors are then refitted
  exactly by least squares for the chosen mask.
* ``"diagonal"``: only ``diag H`` (llama.cpp's importance matrix): weighted k-means;
  pruning by the Wanda score ``|w_ij| · ‖x_j‖`` per output row. No weight update.
* ``"fisher"``: per-entry weights ``Σ g²`` (SqueezeLLM): weighted k-means; pruning by
  ``F_ij · w_ij²`` (optimal brain damage with the empirical Fisher).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .. import kmeans
from ..config import CALIBRATED_INIT, DEFAULT_ALGORITHM, DEFAULT_DAMPING
from .hessian import inverse_cholesky
from .refit import refit_codebook, refit_survivors, sort_codebook
from .sweep import codebook_sweep, lookup, output_error, prune_sweep, quotas

__all__ = ["Statistics", "dense_target", "prune_matrix", "share_matrix"]

logger = logging.getLogger(__name__)


@dataclass
class Statistics:
    """What the calibration pass learnt about one weight.

    Layers reading the same input (attention's query, key and value) share one
    ``Statistics``: what is derived from it (the centred form, factorisations) is computed
    once, by :meth:`cached`, and must not be changed in place.

    Attributes:
        hessian: ``(C, C)`` input Hessian ``(1/n) Σ x̃ x̃ᵀ`` of a Linear/Conv layer over
            the inputs ``x̃`` it sees once the earlier layers are compressed, or ``None``.
        importance: per-entry weights of the 2-D weight's shape (Fisher ``Σ g²``, or an
            embedding's row counts), or ``None``.
        cross: ``(C, C)`` ``(1/n) Σ x x̃ᵀ`` with ``x`` the dense model's inputs for the
            same tokens, or ``None`` (then ``x̃ = x``); with ``cross_weight`` ``W`` it is
            ``(R, C)`` ``W (1/n) Σ x x̃ᵀ``, all that :func:`dense_target` needs.
        mean: ``(C,)`` the mean input ``x̃``, or ``None``.
        reference_mean: ``(C,)`` the mean dense input ``x`` (with ``cross``), or ``None``.
        cross_weight: ``(R, C)`` the weight ``cross`` is premultiplied by, or ``None``.
    """

    hessian: Tensor | None = None
    importance: Tensor | None = None
    cross: Tensor | None = None
    mean: Tensor | None = None
    reference_mean: Tensor | None = None
    cross_weight: Tensor | None = None
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def cached(self, key: object, make: Callable[[], Any]) -> Any:
        """``make()``, computed once per ``key`` for these statistics.

        Example:
            >>> s = Statistics()
            >>> s.cached("k", lambda: [1]) is s.cached("k", lambda: [2])
            True
        """
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    @property
    def centerable(self) -> bool:
        """Whether a free bias can take over the mean output error (:meth:`centered`):
        the means are known (the dense one too, with ``cross``)."""
        if self.hessian is None or self.mean is None:
            return False
        return self.cross is None or self.reference_mean is not None

    def centered(self) -> Statistics:
        r"""The statistics of a layer whose bias absorbs the mean output error.

        With a free bias ``b``, ``min_δ Σ_t ‖Δ x_t − δ‖²`` is ``tr(Δ Σ Δᵀ)`` with the input
        covariance ``Σ = H − μ μᵀ``, reached at ``δ = Δ μ`` (bias correction, Nagel et
        al. 2019): the sweep then spends its codes on what the bias cannot fix. With
        ``cross`` (fitting the dense outputs) the cross term is centred too,
        ``C − μ_ref μᵀ`` (``W C − (W μ_ref) μᵀ`` with ``cross_weight``), and the bias takes
        ``W μ_ref − Q μ``.

        Example:
            >>> s = Statistics(hessian=torch.tensor([[2.0]]), mean=torch.tensor([1.0]))
            >>> s.centered().hessian
            tensor([[1.]])
        """
        if not self.centerable:
            return self

        def make() -> Statistics:
            mu = self.mean.to(self.hessian.dtype)
            h = self.hessian - torch.outer(mu, mu)
            if self.cross is None:
                return Statistics(h, self.importance, None, self.mean)
            ref = self.reference_mean.to(self.hessian.dtype)
            if self.cross_weight is not None:
                ref = self.cross_weight.to(ref.dtype) @ ref
            cross = self.cross - torch.outer(ref, mu)
            return Statistics(
                h, self.importance, cross, self.mean, self.reference_mean, self.cross_weight
            )

        return self.cached("centered", make)


def dense_target(w: Tensor, stats: Statistics, damping: float) -> Tensor:
    r"""The weight ``W'`` whose outputs on the compressed model's inputs best match the dense ones.

    Minimising ``Σ_t ‖W x_t − Q x̃_t‖²`` over ``Q`` equals minimising
    ``tr((Q − W') H̃ (Q − W')ᵀ)`` with ``W' = W C H̃⁻¹``, ``C = Σ x x̃ᵀ``: the compressed
    layer is fitted to the dense model's outputs, so it also corrects the errors that
    earlier compressed layers put into its inputs ("asymmetric" calibration, as in GPTAQ).
    With a few thousand calibration tokens that regression is noisy; it is regularised
    towards ``W`` itself, ``W' = W (C + λI)(H̃ + λI)⁻¹`` with ``λ`` the relative
    ``damping`` of ``diag H̃`` (a ridge towards zero, ``W C (H̃ + λI)⁻¹``, shrinks every
    weight and measured far worse: 0.908 against 0.995 cosine at 4 bits on a BERT).

    Example:
        >>> h = torch.eye(2)
        >>> dense_target(torch.ones(1, 2), Statistics(hessian=h, cross=2 * h), 0.0)
        tensor([[2., 2.]])
        >>> dense_target(torch.ones(1, 2), Statistics(hessian=h, cross=2 * h), 1.0)
        tensor([[1.5000, 1.5000]])
    """
    if stats.cross is None or stats.hessian is None:
        return w
    premultiplied = stats.cross_weight is not None
    if premultiplied and not _same_weight(w, stats.cross_weight):
        logger.warning(
            "the cross term was gathered for another weight; fitting the layer to its own "
            "outputs instead of the dense ones"
        )
        return w
    # float32: the ridge bounds the condition number by about max(diag H) / λ.
    h = stats.hessian.to(torch.float32)
    lam = max(damping * float(torch.diagonal(h).clamp(min=0).mean()), 1e-12)
    eye = torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    chol, info = stats.cached(("ridge", damping), lambda: torch.linalg.cholesky_ex(h + lam * eye))
    if int(info) != 0:
        return w
    w32, cross = w.to(torch.float32), stats.cross.to(torch.float32)
    rhs = (cross + lam * w32 if premultiplied else w32 @ (cross + lam * eye)).T
    return torch.cholesky_solve(rhs, chol).T.to(w.dtype)


def _same_weight(w: Tensor, other: Tensor) -> bool:
    return w.shape == other.shape and torch.equal(w.to(torch.float32), other.to(w.device))


def _damped(h: Tensor, used: float) -> Tensor:
    lam = used * float(torch.diagonal(h).clamp(min=0).mean())
    return h + lam * torch.eye(h.shape[0], dtype=h.dtype, device=h.device)


def _entry_weights(
    w: Tensor, stats: Statistics, damping: float, inverse_diagonal: Tensor | None = None
) -> Tensor:
    if stats.importance is not None:
        imp = stats.importance.to(torch.float32)
        # Entries no sample touched still need a voice in the codebook.
        floor = float(imp.max()) * 1e-6 if imp.numel() else 0.0
        return imp.clamp(min=floor if floor > 0 else 1e-12)
    if stats.hessian is not None:
        d = torch.diagonal(stats.hessian).to(torch.float32).clamp(min=0)
        live = d > 0
        d = d + damping * float(d.mean()) + 1e-12
        if inverse_diagonal is not None:
            # An error in column j costs H_jj where nothing compensates it and
            # 1 / [H⁻¹]_jj where every other column does; the sweep lies between the two.
            # Their geometric mean, against H_jj and 1 / [H⁻¹]_jj: MiniLM-L3 3-bit 0.9816
            # against 0.9813 and 0.9815, its 6-layer stand-in 0.9717 against 0.9711 and
            # 0.9719, the GPT (mean gap closed over 20 seeds, 4 / 3 bits) 75.3 / 77.7 %
            # against 74.7 / 77.8 % and 74.1 / 75.2 %: the one that lost nowhere
            # (benchmarks/results/post_training_weights.txt).
            geo = (d / inverse_diagonal.to(d.dtype).clamp(min=1e-30)).sqrt()
            d = torch.where(live, geo, d)
        return d.unsqueeze(0).expand_as(w)
    return torch.ones_like(w)


# Lloyd iterations of the initial codebook: the sweep and the refit move the result on,
# and on a BERT 30 iterations cost 0.0001 cosine against 300 for 10 % of the run time.
INIT_ITERS = 30


def _kmeans(
    w: Tensor,
    keep: Tensor,
    sw: Tensor,
    bits: int,
    per_row: bool,
    init: str,
    method: str,
    generator: torch.Generator | None,
    with_codes: bool = True,
) -> tuple[Tensor, Tensor | None]:
    # One codebook per row clusters every row; one for the tensor clusters its kept entries.
    x, xw = (w, sw) if per_row else (w[keep], sw[keep])
    opts = dict(
        init=init, method=method, sample_weight=xw, generator=generator, max_iter=INIT_ITERS
    )
    if not with_codes:
        cb = kmeans.kmeans1d_centroids(x, 2**bits, **opts)
        # kmeans1d's centroids are ascending: sorted as sort_codebook would leave them.
        return (cb if per_row else cb.unsqueeze(0)).to(torch.float32), None
    cb, labels = kmeans.kmeans1d(x, 2**bits, **opts)
    if per_row:
        codes = labels.to(torch.int64)
    else:
        cb = cb.unsqueeze(0)
        codes = torch.full(w.shape, -1, dtype=torch.int64, device=w.device)
        codes[keep] = labels.to(torch.int64)
    return sort_codebook(cb.to(torch.float32), torch.where(keep, codes, -1))


def _initial_codebook(
    w: Tensor,
    keep: Tensor,
    weights: Tensor,
    bits: int,
    per_row: bool,
    init: str,
    method: str,
    generator: torch.Generator | None,
    *,
    skewed: bool = False,
    with_codes: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """Weighted k-means codebook (sorted) and codes (``-1`` where pruned; ``None`` without
    ``with_codes``, for a caller that assigns them itself).

    With ``skewed`` weights (per-entry importance spanning orders of magnitude) Lloyd from
    an evenly spaced init can stall with centroids on entries that weigh nothing; the
    weighted-quantile ("density") init is run too and the lower weighted SSE kept (per
    row when there is one codebook per row).
    """
    sw = torch.where(keep, weights, weights.new_zeros(()))
    if not with_codes and not skewed:
        return _kmeans(w, keep, sw, bits, per_row, init, method, generator, with_codes=False)
    best = _kmeans(w, keep, sw, bits, per_row, init, method, generator)
    if not skewed or init == "density":
        return best
    other = _kmeans(w, keep, sw, bits, per_row, "density", method, generator)

    def cost(cb_codes: tuple[Tensor, Tensor]) -> Tensor:
        err = (w - lookup(*cb_codes)).square() * sw
        return err.sum(1) if per_row else err.sum().reshape(1)

    better = cost(other) < cost(best)
    if not per_row:
        return other if bool(better) else best
    k = max(best[0].shape[1], other[0].shape[1])
    pad = lambda cb: torch.cat([cb, cb[:, -1:].expand(-1, k - cb.shape[1])], 1)  # noqa: E731
    cb = torch.where(better.unsqueeze(1), pad(other[0]), pad(best[0]))
    codes = torch.where(better.unsqueeze(1), other[1], best[1])
    return cb, codes


def _skewed(importance: Tensor | None, per_row: bool) -> bool:
    """Whether per-entry importance can stall Lloyd (see :func:`_initial_codebook`).

    Not when every codebook's entries weigh the same, as an embedding's rows do per
    channel (each weighs its token's count): the weighted k-means of such a row is the
    unweighted one. The second init had doubled the time of a BERT's embeddings
    (MiniLM-L3, per channel: 10.2 against 5.4 s of k-means; cosine 0.9719 against 0.9720
    with its three embeddings shared at 3 bits).

    Example:
        >>> _skewed(torch.tensor([[2.0, 2.0], [5.0, 5.0]]), per_row=True)
        False
        >>> _skewed(torch.tensor([[2.0, 2.0], [5.0, 5.0]]), per_row=False)
        True
    """
    if importance is None:
        return False
    if not per_row:
        return True
    return not bool((importance == importance[:, :1]).all())


def share_matrix(
    w: Tensor,
    keep: Tensor,
    stats: Statistics,
    *,
    bits: int,
    per_row: bool,
    algorithm: str = DEFAULT_ALGORITHM,
    damping: float = DEFAULT_DAMPING,
    init: str = CALIBRATED_INIT,
    method: str = "lloyd",
    refits: int = 1,
    block: int = 128,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    r"""Codebook(s) and codes for ``w`` that minimise the layer's output error.

    Args:
        w (Tensor): ``(R, C)`` weight (rows are output channels).
        keep (Tensor): ``(R, C)`` ``bool``; pruned entries stay zero (code ``-1``).
        stats (Statistics): the weight's calibration statistics.
        bits (int): at most ``2**bits`` centroids per codebook.
        per_row (bool): one codebook per row, else one for the whole weight.
        algorithm (str): see the module docstring; ``"hessian"`` needs ``stats.hessian``.
        damping (float): relative Hessian dampening.
        init, method (str): k-means settings of the initial codebook.
        refits (int): sweep + refit rounds (``"hessian"`` only); 0 keeps the k-means
            centroids.
        block (int): columns per lazy block of the sweep.
        generator (torch.Generator, optional): randomness of random inits.

    Returns:
        ``(codebook, codes)``: float32 ``(R, k)`` or ``(1, k)`` sorted codebook, and
        ``int64`` ``(R, C)`` codes, ``-1`` where pruned.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(256, 8, generator=g)
        >>> w = torch.randn(4, 8, generator=g)
        >>> stats = Statistics(hessian=x.T @ x / 256)
        >>> keep = torch.ones(4, 8, dtype=torch.bool)
        >>> cb, codes = share_matrix(w, keep, stats, bits=2, per_row=True)
        >>> cb.shape, int(codes.max()) <= 3
        (torch.Size([4, 4]), True)
    """
    w = dense_target(w.detach().to(torch.float32), stats, damping)
    sweep = algorithm == "hessian" and stats.hessian is not None and bool(keep.any())
    h = stats.hessian.to(torch.float32) if sweep else None

    def factor() -> tuple[Tensor, Tensor, Tensor, Tensor]:
        assert h is not None
        order = torch.argsort(torch.diagonal(h), descending=True, stable=True)
        u, _, used = inverse_cholesky(h[order][:, order], damping)
        return order, torch.argsort(order), u, _damped(h, used)

    inverse_diagonal = None
    if sweep and stats.importance is None:
        order, inverse, u, h_damped = stats.cached(("sweep", damping), factor)
        # diag (H + λI)⁻¹ = the column norms² of its factor U (Uᵀ U), back in input order.
        inverse_diagonal = u.square().sum(0)[inverse]
    weights = _entry_weights(w, stats, damping, inverse_diagonal)
    cb, codes = _initial_codebook(
        w,
        keep,
        weights,
        bits,
        per_row,
        init,
        method,
        generator,
        skewed=_skewed(stats.importance, per_row),
        # The sweep assigns every code itself.
        with_codes=not sweep,
    )
    if not sweep:
        assert codes is not None
        return cb, codes
    assert h is not None
    order, inverse, u, h_damped = stats.cached(("sweep", damping), factor)
    # The sweep assigns codes for the same objective as the k-means, with error feedback:
    # its result is the baseline (the k-means codes alone never measured better).
    if refits <= 1:
        codes = codebook_sweep(w[:, order], u, cb, keep[:, order], block=block)[:, inverse]
        if refits == 1:
            # The refit is the least-squares optimum under the dampened H for these codes:
            # never worse than the sweep's centroids there, so no error is measured.
            cb, codes = sort_codebook(refit_codebook(w, codes, h_damped, cb), codes)
        return cb, codes
    best: tuple[float, Tensor, Tensor] | None = None
    for _ in range(refits):
        codes = codebook_sweep(w[:, order], u, cb, keep[:, order], block=block)[:, inverse]
        err = output_error(w, lookup(cb, codes), h)
        if best is None or err < best[0]:
            best = (err, cb, codes)
        cb, codes = sort_codebook(refit_codebook(w, codes, h_damped, cb), codes)
        err = output_error(w, lookup(cb, codes), h)
        if err < best[0]:
            best = (err, cb, codes)
    assert best is not None
    logger.debug("sharing output error %.4g", best[0])
    return best[1], best[2]


def prune_matrix(
    w: Tensor,
    keep: Tensor,
    stats: Statistics,
    extra: int,
    *,
    algorithm: str = DEFAULT_ALGORITHM,
    damping: float = DEFAULT_DAMPING,
    block: int = 128,
) -> tuple[Tensor, Tensor | None]:
    r"""Prune ``extra`` more entries of ``w`` by their effect on the layer's output.

    Args:
        w (Tensor): ``(R, C)`` weight.
        keep (Tensor): ``(R, C)`` ``bool``, entries not yet pruned.
        stats (Statistics): the weight's calibration statistics.
        extra (int): how many kept entries to prune.
        algorithm (str): see the module docstring.
        damping (float): relative Hessian dampening (``"hessian"``).
        block (int): columns per block of the SparseGPT sweep.

    Returns:
        ``(new_keep, new_w)``: ``new_w`` holds the updated survivors (``"hessian"`` with a
        Hessian), else ``None`` (the values stay).

    Example:
        >>> w = torch.tensor([[3.0, 1.0], [1.0, 3.0]])
        >>> stats = Statistics(hessian=torch.diag(torch.tensor([1.0, 100.0])))
        >>> keep, _ = prune_matrix(w, torch.ones(2, 2, dtype=torch.bool), stats, 2,
        ...                        algorithm="diagonal")
        >>> keep.tolist()
        [[False, True], [False, True]]
    """
    w = dense_target(w.detach().to(torch.float32), stats, damping)
    extra = min(int(extra), int(keep.sum()))
    if extra <= 0:
        return keep.clone(), None
    if algorithm == "hessian" and stats.hessian is not None:
        h = stats.hessian.to(torch.float32)

        def factor() -> tuple[Tensor, Tensor]:
            u, _, used = inverse_cholesky(h, damping)
            return u, _damped(h, used)

        u, h_damped = stats.cached(("prune", damping), factor)
        new_keep, new_w = prune_sweep(w, u, keep, extra, block=block)
        # The sweep's updates are greedy; the best survivors for the chosen mask are a
        # least-squares problem of their own (a third less output error measured).
        return new_keep, refit_survivors(w, new_keep, h_damped, new_w)
    if stats.importance is not None:
        score = stats.importance.to(torch.float32) * w.square()
        per_row = False
    elif stats.hessian is not None:
        norms = torch.diagonal(stats.hessian).to(torch.float32).clamp(min=0).sqrt()
        score, per_row = w.abs() * norms.unsqueeze(0), True
    else:
        score, per_row = w.abs(), False
    return _lowest(score, keep, extra, per_row), None


def _lowest(score: Tensor, keep: Tensor, extra: int, per_row: bool) -> Tensor:
    """Prune the ``extra`` kept entries of lowest score (per row in proportion if asked)."""
    masked = torch.where(keep, score, score.new_full((), float("inf")))
    new_keep = keep.clone()
    if not per_row:
        idx = torch.topk(masked.reshape(-1), extra, largest=False).indices
        new_keep.view(-1)[idx] = False
        return new_keep
    share = quotas(extra, keep.sum(1))
    order = torch.argsort(masked, dim=1, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    return keep & ~(rank < share.unsqueeze(1))
