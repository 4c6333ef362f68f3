"""What a tensor of a module is, asked in one place: :class:`TensorState`.

A tensor ``module.<name>`` is in one of five states:

=================  ==========================================================
``PLAIN``          an ``nn.Parameter`` of ``module`` itself
``TORCH_PRUNED``   pruned by a ``torch.nn.utils.prune`` forward pre-hook
                   (``<name>_orig`` and ``<name>_mask``)
``MASKED``         carries this package's :class:`~torchprune_share.PruningMask`
``SHARED``         carries this package's :class:`~torchprune_share.WeightSharing`
``FOREIGN``        carries some other ``torch.nn.utils.parametrize`` parametrization
=================  ==========================================================

Every module that needs to know which (pruning, sharing, the checkpoint loader, the
summary, the scans) asks :meth:`TensorState.of`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize, prune

from .compat import is_sole_reference, parameter_owners, prune_hook, prune_hooks
from .parametrizations import PruningMask, WeightSharing, get_reparametrization

__all__ = [
    "FOREIGN",
    "KINDS",
    "MASKED",
    "PLAIN",
    "SHARED",
    "TORCH_PRUNED",
    "TensorState",
    "class_name",
    "describe_owners",
]

PLAIN, TORCH_PRUNED, MASKED, SHARED, FOREIGN = (
    "plain",
    "torch_pruned",
    "masked",
    "shared",
    "foreign",
)
KINDS = (PLAIN, TORCH_PRUNED, MASKED, SHARED, FOREIGN)


def class_name(module: nn.Module) -> str:
    """``Linear`` for a ``ParametrizedLinear``: the class the user knows.

    Args:
        module (nn.Module): the module.

    Example:
        >>> class_name(nn.Linear(2, 2))
        'Linear'
    """
    return parametrize.type_before_parametrizations(module).__name__


def _own_parameter(module: nn.Module, name: str) -> nn.Parameter | None:
    for pname, param in module.named_parameters(recurse=False, remove_duplicate=False):
        if pname == name:
            return param
    return None


def describe_owners(owners: list[tuple[nn.Module, str]]) -> str:
    """``"Embedding.weight, Linear.weight"``: the owners of a tied tensor, for messages.

    Args:
        owners (list of (module, name)): e.g. :meth:`TensorState.owners`.

    Example:
        >>> describe_owners([(nn.Embedding(2, 2), "weight"), (nn.Linear(2, 2), "weight")])
        'Embedding.weight, Linear.weight'
    """
    return ", ".join(f"{class_name(m)}.{n}" for m, n in owners)


@dataclass(frozen=True)
class TensorState:
    r"""The state of ``module.<name>``: its kind and what each kind keeps where.

    Build it with :meth:`of` (or :meth:`find`); it reads the module when asked, so it stays
    right while the values train, but describes the kind at the time it was built.

    Args:
        module (nn.Module): the module holding the tensor.
        name (str): the tensor's name in ``module`` (the user-facing one, ``"weight"``).
        kind (str): one of :data:`KINDS`.
        reparam (PruningMask or WeightSharing or None): this package's parametrization.
        hook (BasePruningMethod or None): torch's pruning method.

    Example:
        >>> from torchprune_share import level_prune
        >>> lin = level_prune(nn.Linear(4, 2), amount=0.5)
        >>> st = TensorState.of(lin, "weight")
        >>> st.kind, tuple(st.shape), int(st.keep().sum())
        ('masked', (2, 4), 4)
    """

    module: nn.Module
    name: str
    kind: str
    reparam: PruningMask | WeightSharing | None = None
    hook: prune.BasePruningMethod | None = None

    @classmethod
    def find(cls, module: nn.Module, name: str) -> TensorState | None:
        """The state of ``module.<name>``, or ``None`` when it names no parameter.

        Args:
            module (nn.Module): the module.
            name (str): the tensor's name.

        Example:
            >>> TensorState.find(nn.Linear(2, 2), "nope") is None
            True
        """
        if parametrize.is_parametrized(module, name):
            reparam = get_reparametrization(module, name)
            if isinstance(reparam, WeightSharing):
                return cls(module, name, SHARED, reparam=reparam)
            if isinstance(reparam, PruningMask):
                return cls(module, name, MASKED, reparam=reparam)
            return cls(module, name, FOREIGN)
        hook = prune_hook(module, name)
        if hook is not None:
            return cls(module, name, TORCH_PRUNED, hook=hook)
        if _own_parameter(module, name) is not None:
            return cls(module, name, PLAIN)
        return None

    @classmethod
    def of(cls, module: nn.Module, name: str) -> TensorState:
        """The state of ``module.<name>``.

        Args:
            module (nn.Module): the module.
            name (str): the tensor's name.

        Raises:
            TypeError: ``module`` is no ``nn.Module`` or ``name`` no ``str``.
            ValueError: ``name`` is no parameter of ``module`` (the message lists them).

        Example:
            >>> TensorState.of(nn.Linear(2, 2), "bias").kind
            'plain'
        """
        if not isinstance(module, nn.Module):
            raise TypeError(f"module must be an nn.Module, got {type(module).__name__}")
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, got {type(name).__name__}")
        state = cls.find(module, name)
        if state is None:
            names = {n for n, _ in module.named_parameters(recurse=False)}
            if parametrize.is_parametrized(module):
                names |= set(module.parametrizations)
            names |= set(prune_hooks(module))
            raise ValueError(
                f"name={name!r} is not a parameter of {class_name(module)}; expected one "
                f"of {sorted(names)}"
            )
        return state

    # -- what callers ask --------------------------------------------------------------
    @property
    def compressed(self) -> bool:
        """Whether this package's parametrization carries the tensor (masked or shared)."""
        return self.reparam is not None

    @property
    def shape(self) -> torch.Size:
        """The dense tensor's shape, without computing a reparametrized value."""
        return self._meta()[0]

    @property
    def dtype(self) -> torch.dtype:
        """The dense tensor's dtype, without computing a reparametrized value."""
        return self._meta()[1]

    def _meta(self) -> tuple[torch.Size, torch.dtype]:
        if self.kind == SHARED:
            return self.reparam.index.shape, self.parameter().dtype  # type: ignore[union-attr]
        if self.kind == FOREIGN:  # its output may differ from original: compute it
            t = getattr(self.module, self.name)
            return t.shape, t.dtype
        t = self.parameter()
        return t.shape, t.dtype

    def parameter(self) -> Tensor:
        """The stored, trainable tensor: ``original`` (the codebook when shared),
        ``<name>_orig`` when torch-pruned, else the parameter itself.

        Example:
            >>> TensorState.of(nn.Linear(2, 3), "weight").parameter().shape
            torch.Size([3, 2])
        """
        if self.kind in (MASKED, SHARED, FOREIGN):
            return self.module.parametrizations[self.name].original
        if self.kind == TORCH_PRUNED:
            return getattr(self.module, self.name + "_orig")
        return _own_parameter(self.module, self.name)  # type: ignore[return-value]

    def value(self) -> Tensor:
        """The effective value, detached (computed for a reparametrized tensor).

        Example:
            >>> lin = nn.Linear(2, 2)
            >>> torch.equal(TensorState.of(lin, "weight").value(), lin.weight)
            True
        """
        with torch.no_grad():
            if self.kind == TORCH_PRUNED:
                mask = getattr(self.module, self.name + "_mask")
                return self.parameter().detach() * mask
            if self.kind == PLAIN:
                return self.parameter().detach()
            return getattr(self.module, self.name).detach()

    def keep(self) -> Tensor:
        """``bool`` mask of the unpruned entries (a fresh tensor; all ``True`` unless pruned).

        Example:
            >>> TensorState.of(nn.Linear(2, 2), "weight").keep().all().item()
            True
        """
        if self.kind == MASKED:
            return self.reparam.mask.clone()  # type: ignore[union-attr]
        if self.kind == SHARED:
            return self.reparam.kept()  # type: ignore[union-attr]
        if self.kind == TORCH_PRUNED:
            return getattr(self.module, self.name + "_mask") != 0
        return torch.ones(self.shape, dtype=torch.bool, device=self.parameter().device)

    def to_plain(self) -> None:
        """Restore a plain parameter holding the current value (bake this one tensor).

        Removes this package's parametrization (``leave_parametrized=True``) or torch's
        pruning hook (``prune.remove``); a plain tensor is left as it is. A foreign
        parametrization is not this package's to remove: ``ValueError``.

        Example:
            >>> from torchprune_share import register_weight_sharing
            >>> lin = register_weight_sharing(nn.Linear(4, 4), bits=1)
            >>> before = lin.weight.detach().clone()
            >>> TensorState.of(lin, "weight").to_plain()
            >>> TensorState.of(lin, "weight").kind, torch.equal(lin.weight, before)
            ('plain', True)
        """
        if self.kind in (MASKED, SHARED):
            # Tied owners share the chain and its original: detach the others first (the
            # original stays their parameter), then bake this one, which turns that
            # same Parameter object into the full tensor for all.
            for module, name in self.owners()[1:]:
                parametrize.remove_parametrizations(module, name, leave_parametrized=False)
            parametrize.remove_parametrizations(self.module, self.name, leave_parametrized=True)
            self.reparam.tied = []  # type: ignore[union-attr]
        elif self.kind == TORCH_PRUNED:
            prune.remove(self.module, self.name)
        elif self.kind == FOREIGN:
            raise ValueError(
                f"name={self.name!r}: the tensor carries a foreign parametrization; remove it "
                "with parametrize.remove_parametrizations"
            )

    # -- ties ---------------------------------------------------------------------------
    def owners(self) -> list[tuple[nn.Module, str]]:
        """Every ``(module, name)`` computing with this tensor, this one first.

        More than one when the tensor is tied (``head.weight = emb.weight``): a
        reparametrized tensor records its owners; for a plain or torch-pruned one the
        holders of its Parameter are found (:func:`~torchprune_share.compat.parameter_owners`),
        named as the user names them (``weight``, not ``weight_orig``).

        Example:
            >>> emb, head = nn.Embedding(5, 3), nn.Linear(3, 5, bias=False)
            >>> head.weight = emb.weight
            >>> [type(m).__name__ for m, _ in TensorState.of(head, "weight").owners()]
            ['Linear', 'Embedding']
        """
        me = (self.module, self.name)
        if self.reparam is not None:
            tied = [
                (m, n)
                for m, n in getattr(self.reparam, "tied", [])
                if get_reparametrization(m, n) is self.reparam
            ]
        elif self.kind in (PLAIN, TORCH_PRUNED):
            key = self.name + ("_orig" if self.kind == TORCH_PRUNED else "")
            if self.module._parameters.get(key) is None or is_sole_reference(self.module, key):
                return [me]
            tied = []
            for m, k in parameter_owners(self.module._parameters[key], hint=self.module):
                hooked = k.endswith("_orig") and prune_hook(m, k[: -len("_orig")]) is not None
                tied.append((m, k[: -len("_orig")] if hooked else k))
        else:
            return [me]
        others = [(m, n) for m, n in tied if not (m is self.module and n == self.name)]
        return [me, *others]

    def tie_group(self) -> list[tuple[nn.Module, str]]:
        """:meth:`owners`, after checking that this package can compress them together.

        A tied tensor is compressed once for all its owners, which must therefore be in
        the same state: all plain, or all carrying this parametrization. torch's pruning
        hooks prune one owner only (the others stay dense), so a tie pruned by them is
        refused, as is a partner inside another parametrization.

        Raises:
            ValueError: naming every owner and its state, when they are not all plain.

        Example:
            >>> emb, head = nn.Embedding(5, 3), nn.Linear(3, 5, bias=False)
            >>> head.weight = emb.weight
            >>> len(TensorState.of(emb, "weight").tie_group())
            2
        """
        owners = self.owners()
        if len(owners) == 1 or self.reparam is not None:
            return owners
        kinds = []
        for m, n in owners:
            state = TensorState.find(m, n)
            chain = isinstance(m, parametrize.ParametrizationList)
            kinds.append(FOREIGN if state is None or chain else state.kind)
        if any(k != PLAIN for k in kinds):
            raise ValueError(
                f"name={self.name!r} is tied to {len(owners) - 1} other tensor(s) "
                f"({describe_owners(owners)}: {', '.join(kinds)}), which this package cannot "
                "compress together; untie them, or make them plain (prune.remove, "
                "remove_parametrizations) and prune with torchprune_share.level_prune"
            )
        return owners
