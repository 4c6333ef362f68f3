"""What the policies share: reading options, resolving their names, reporting every problem."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from .names import DEFAULT, default_parameter_names, resolve_tensor

__all__ = [
    "Problems",
    "check_option_names",
    "option_entries",
    "raise_problems",
    "resolve_options",
    "with_defaults",
]


def option_entries(options: object, what: str) -> list[tuple[Any, ...]]:
    """Options as a list of tuples: from ``{name: value}`` or ``[[name, value, ...], ...]``.

    Args:
        options (object): what the user passed.
        what (str): the policy's name, for messages.

    Raises:
        TypeError: ``options`` is neither, or an entry is no sequence.

    Example:
        >>> option_entries({"fc.weight": 0.5}, "LevelPruner")
        [('fc.weight', 0.5)]
    """
    if isinstance(options, Mapping):
        return [(k, *(v if isinstance(v, tuple) else (v,))) for k, v in options.items()]
    if isinstance(options, (str, bytes)) or not isinstance(options, Sequence):
        raise TypeError(
            f"{what} options must be a list of [name, value] pairs or a dict, "
            f"got {type(options).__name__}"
        )
    out = []
    for entry in options:
        if isinstance(entry, (str, bytes)) or not isinstance(entry, Sequence):
            raise TypeError(f"{what} options: each entry must be [name, value], got {entry!r}")
        out.append(tuple(entry))
    return out


class Problems(list):
    """The bad entries of a policy's options; each also recorded as a wrong type or not.

    Example:
        >>> bad = Problems()
        >>> bad.type_error("'x': bits must be an int")
        >>> bad.wrong_types, len(bad)
        (1, 1)
    """

    def __init__(self) -> None:
        super().__init__()
        self.wrong_types = 0

    def type_error(self, message: str) -> None:
        """Record a wrong-type problem.

        Args:
            message (str): the problem.

        Example:
            >>> bad = Problems()
            >>> bad.type_error("'*': bits must be an int")
            >>> bad.wrong_types
            1
        """
        self.append(message)
        self.wrong_types += 1

    def error(self, prefix: str, err: Exception) -> None:
        """Record an exception's message, a wrong type if it is a ``TypeError``.

        Args:
            prefix (str): what the problem belongs to, e.g. ``"'fc.weight': "``.
            err (Exception): the ``TypeError`` or ``ValueError`` raised.

        Example:
            >>> bad = Problems()
            >>> bad.error("'w': ", ValueError("bits must be in [1, 16]"))
            >>> list(bad), bad.wrong_types
            (["'w': bits must be in [1, 16]"], 0)
        """
        if isinstance(err, TypeError):
            self.type_error(f"{prefix}{err}")
        else:
            self.append(f"{prefix}{err}")


def raise_problems(what: str, bad: list[str]) -> None:
    """Raise listing every problem: ``TypeError`` if each is a wrong type, else ``ValueError``.

    Args:
        what (str): the policy's name.
        bad (list[str]): the problems (a :class:`Problems` knows which are wrong types).

    Example:
        >>> raise_problems("Quantizer", ["'x': bits must be in [1, 16]"])
        Traceback (most recent call last):
        ...
        ValueError: Quantizer options have 1 bad entries (nothing applied): 'x': bits must be in [1, 16]
    """
    if bad:
        only_types = isinstance(bad, Problems) and bad.wrong_types == len(bad)
        raise (TypeError if only_types else ValueError)(
            f"{what} options have {len(bad)} bad entries (nothing applied): " + "; ".join(bad)
        )


def check_option_names(entries: list[tuple[Any, ...]], bad: Problems) -> None:
    """Record names that are no str, and duplicates, in ``bad``.

    Args:
        entries (list[tuple]): the options, name first.
        bad (Problems): where problems go.

    Example:
        >>> bad = Problems()
        >>> check_option_names([("a", 1), ("a", 2), (3, 1)], bad)
        >>> list(bad)
        ["3: a name must be a str such as 'fc1.weight' or '*'", "duplicate names ['a']"]
    """
    names = [e[0] if e else None for e in entries]
    for name in names:
        if not isinstance(name, str):
            bad.type_error(f"{name!r}: a name must be a str such as 'fc1.weight' or '*'")
    dupes = sorted({n for n in names if isinstance(n, str) and names.count(n) > 1})
    if dupes:
        bad.append(f"duplicate names {dupes}")


def resolve_options(
    model: nn.Module, names: Sequence[str], what: str
) -> dict[str, tuple[nn.Module, str]]:
    """Resolve every explicit name (not ``"*"``); raise listing all unknown names.

    Args:
        model (nn.Module): the model.
        names (Sequence[str]): the options' names.
        what (str): the policy's name, for messages.

    Returns:
        ``{name: (module, tensor name)}``.

    Example:
        >>> resolve_options(nn.Sequential(nn.Linear(2, 2)), ["0.weight", "*"], "LevelPruner")
        {'0.weight': (Linear(in_features=2, out_features=2, bias=True), 'weight')}
    """
    bad, found, seen = [], {}, {}
    for name in names:
        if name == DEFAULT:
            continue
        try:
            found[name] = resolve_tensor(model, name)
        except ValueError as err:
            bad.append(str(err))
            continue
        key = (id(found[name][0]), found[name][1])
        if key in seen:
            bad.append(f"duplicate: {name!r} names the same tensor as {seen[key]!r}")
        seen[key] = name
    raise_problems(what, bad)
    return found


def with_defaults(
    model: nn.Module, options: Mapping[str, Any], what: str
) -> list[tuple[str, nn.Module, str, Any]]:
    """The tensors options act on: the named ones in option order, then those ``"*"`` covers.

    Args:
        model (nn.Module): the model.
        options (Mapping): ``{name: value}``, ``"*"`` for the default.
        what (str): the policy's name, for messages.

    Returns:
        ``(qualified_name, module, name, value)`` tuples.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
        >>> [(q, v) for q, _, _, v in with_defaults(net, {"1.weight": 1, "*": 2}, "x")]
        [('1.weight', 1), ('0.weight', 2)]
    """
    found = resolve_options(model, list(options), what)
    out = [(q, *found[q], v) for q, v in options.items() if q != DEFAULT]
    if DEFAULT in options:
        named = {(id(m), n) for m, n in found.values()}
        for q in default_parameter_names(model):
            module, name = resolve_tensor(model, q)
            if (id(module), name) not in named:
                out.append((q, module, name, options[DEFAULT]))
    return out
