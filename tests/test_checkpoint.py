"""Baking, state_dict checkpoints and loading into fresh models; docstring examples."""

from __future__ import annotations

import copy
import doctest
import importlib
import inspect
import io

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize, prune

from torchprune_share import (
    CheckpointError,
    LevelPruningMethod,
    bake,
    compressed_tensors,
    level_prune,
    load_state_dict,
    register_weight_sharing,
)
from torchprune_share.config import SharingConfig

from .conftest import bitwise_equal, module_state

EMB_STATE = "emb.parametrizations.weight.0._extra_state"


def with_setting(sd: dict, position: int, value: int) -> dict:
    """``sd`` with entry ``position`` of emb.weight's sharing state tensor replaced."""
    state = sd[EMB_STATE].clone()
    state[position] = value
    return mutate(sd, EMB_STATE, state)


def as_dict_state(sd: dict, **changes) -> dict:
    """``sd`` with emb.weight's sharing state as 0.1.0 wrote it (a dict), changed."""
    config, k = SharingConfig.from_state(sd[EMB_STATE])
    extra = {
        "bits": config.bits,
        "granularity": config.granularity,
        "channel_axis": config.channel_axis,
        "init": config.init,
        "method": config.method,
        "num_centroids": k,
    }
    return mutate(sd, EMB_STATE, {**extra, **changes})


class Net(nn.Module):
    """Every kind of layer, with a float parameter of a custom name."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(12, 64)
        self.conv1 = nn.Conv1d(64, 6, 3)
        self.conv2 = nn.Conv2d(1, 4, 3)
        self.conv3 = nn.Conv3d(1, 2, 2)
        self.fc = nn.Linear(6 + 4 * 2 * 2 + 2 * 27, 5)
        self.gain = nn.Parameter(torch.randn(5))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.emb(tokens).transpose(1, 2)).mean(-1)  # (B, 6)
        img = h[:, None, :, None].expand(-1, 1, 6, 4)  # (B, 1, 6, 4)
        h2 = self.conv2(img).flatten(1)  # (B, 4*4*2)
        h2 = h2[:, : 4 * 2 * 2]
        vol = h[:, None, :4, None, None].expand(-1, 1, 4, 4, 4)
        h3 = self.conv3(vol).flatten(1)  # (B, 2*3*3*3)
        return self.fc(torch.cat([h, h2, h3], dim=1)) * self.gain


def compress(net: Net, torch_hook: bool = True) -> Net:
    level_prune(net.emb, amount=0.5)
    register_weight_sharing(net.emb, bits=8)  # 256 centroids + zero: int32 index
    register_weight_sharing(net.conv1, bits=2)  # shared only
    level_prune(net.conv1, amount=0.3)  # then pruned: zero code
    level_prune(net.conv2, amount=0.4)  # pruned only
    register_weight_sharing(net.conv3, bits=2, granularity="per_channel")
    level_prune(net.fc, amount=0.6)
    register_weight_sharing(net.fc, bits=3)
    register_weight_sharing(net.fc, "bias", bits=1)
    register_weight_sharing(net, "gain", bits=1)
    if torch_hook:  # (torch's hooks make a module impossible to deepcopy, pytorch#37322)
        LevelPruningMethod.apply(net.conv1, "bias", amount=2)
    return net


TOKENS = torch.randint(0, 12, (3, 7))


def roundtrip(sd: dict) -> dict:
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


# -- state_dict contents ---------------------------------------------------------------
def test_state_dict_holds_codebook_and_integer_index():
    net = compress(Net())
    sd = net.state_dict()
    assert net.emb.parametrizations.weight[0].num_centroids == 256
    assert sd["emb.parametrizations.weight.original"].shape == (256,)
    assert sd["emb.parametrizations.weight.0.index"].dtype == torch.int32
    assert sd["fc.parametrizations.weight.original"].shape == (8,)
    assert sd["fc.parametrizations.weight.0.index"].dtype == torch.uint8
    assert sd["conv3.parametrizations.weight.original"].shape == (2, 4)
    assert sd["conv2.parametrizations.weight.0.mask"].dtype == torch.bool
    assert sd["conv1.bias_mask"].shape == (6,)
    shared = ["emb.weight", "conv1.weight", "conv3.weight", "fc.weight", "fc.bias", "gain"]
    for q in shared:
        prefix, _, name = q.rpartition(".")
        base = f"{prefix}.parametrizations.{name}" if prefix else f"parametrizations.{name}"
        assert not sd[f"{base}.0.index"].is_floating_point()
        extra = sd[f"{base}.0._extra_state"]
        assert extra.dtype == torch.int64 and extra.shape == (7,)  # a tensor: safetensors
        assert SharingConfig.from_state(extra)[0].bits in (1, 2, 3, 8)
    # No full-size float copy of any shared weight anywhere in the state_dict: the float
    # tensors are the codebooks, the plain biases and conv2's (pruned-only) dense weight.
    floats = {
        k: v.numel() for k, v in sd.items() if isinstance(v, torch.Tensor) and v.is_floating_point()
    }
    assert floats == {
        "parametrizations.gain.original": 2,
        "emb.parametrizations.weight.original": 256,
        "conv1.parametrizations.weight.original": 4,
        "conv1.bias_orig": 6,
        "conv1.bias_mask": 6,
        "conv2.bias": 4,
        "conv2.parametrizations.weight.original": 36,
        "conv3.bias": 2,
        "conv3.parametrizations.weight.original": 8,
        "fc.parametrizations.weight.original": 8,
        "fc.parametrizations.bias.original": 2,
    }
    assert [q for q, *_ in compressed_tensors(net)] == [
        "gain",
        "emb.weight",
        "conv1.weight",
        "conv2.weight",
        "conv3.weight",
        "fc.weight",
        "fc.bias",
    ]


# -- loading into a fresh model ------------------------------------------------------------
def test_save_load_fresh_model_bitwise():
    net = compress(Net())
    # Train a little so that nothing is at its initial value.
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    for _ in range(3):
        opt.zero_grad()
        net(TOKENS).pow(2).mean().backward()
        opt.step()
    y = net(TOKENS)
    sd = roundtrip(net.state_dict())
    fresh = Net()
    assert load_state_dict(fresh, sd) is fresh
    # Correct before the first forward: every tensor, including the torch-hooked bias.
    for name, tensor in [
        ("emb.weight", fresh.emb.weight),
        ("conv1.weight", fresh.conv1.weight),
        ("conv1.bias", fresh.conv1.bias),
        ("conv2.weight", fresh.conv2.weight),
        ("conv3.weight", fresh.conv3.weight),
        ("fc.weight", fresh.fc.weight),
        ("fc.bias", fresh.fc.bias),
        ("gain", fresh.gain),
    ]:
        mod_name, _, attr = name.rpartition(".")
        ref = getattr(net.get_submodule(mod_name) if mod_name else net, attr)
        assert bitwise_equal(tensor.detach(), ref.detach()), name
    assert bitwise_equal(fresh(TOKENS), y)
    assert list(fresh.state_dict()) == list(net.state_dict())
    for key, value in net.state_dict().items():
        got = fresh.state_dict()[key]
        assert bitwise_equal(got, value) if isinstance(value, torch.Tensor) else got == value
    # The loaded model trains exactly like the saved one.
    twin_opt = torch.optim.SGD(fresh.parameters(), lr=0.1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    for model, o in ((net, opt), (fresh, twin_opt)):
        o.zero_grad()
        model(TOKENS).pow(2).mean().backward()
        o.step()
    assert bitwise_equal(fresh(TOKENS), net(TOKENS))


def test_load_then_bake_equals_bake():
    net = compress(Net())
    fresh = load_state_dict(Net(), roundtrip(net.state_dict()))
    bake(net)
    bake(fresh)
    for (k, a), (k2, b) in zip(net.state_dict().items(), fresh.state_dict().items()):
        assert k == k2 and bitwise_equal(a, b), k


def test_load_plain_checkpoint_into_plain_model():
    net = Net()
    fresh = load_state_dict(Net(), roundtrip(net.state_dict()))
    assert bitwise_equal(fresh(TOKENS), net(TOKENS))
    assert not compressed_tensors(fresh)


def test_load_legacy_int16_index_is_widened():
    lin = register_weight_sharing(level_prune(nn.Linear(40, 40), amount=0.5), bits=8)
    sd = lin.state_dict()
    sd["parametrizations.weight.0.index"] = sd["parametrizations.weight.0.index"].to(torch.int16)
    fresh = load_state_dict(nn.Linear(40, 40), sd)
    assert fresh.parametrizations.weight[0].index.dtype == torch.int32
    assert torch.equal(fresh.weight, lin.weight)


def mutate(sd: dict, key: str, value) -> dict:
    sd = dict(sd)
    if value is None:
        del sd[key]
    else:
        sd[key] = value
    return sd


BAD = {
    "index shape": (
        lambda sd: mutate(
            sd, "emb.parametrizations.weight.0.index", torch.zeros(12, 7, dtype=torch.uint8)
        ),
        r"tensor 'emb.weight': shape mismatch, model has \(12, 64\), checkpoint index \(12, 7\)",
    ),
    "codebook shape": (
        lambda sd: mutate(sd, "fc.parametrizations.weight.original", torch.zeros(7)),
        r"tensor 'fc.weight': shape mismatch.*codebook \(7,\)",
    ),
    "per-channel codebook": (
        lambda sd: mutate(sd, "conv3.parametrizations.weight.original", torch.zeros(3, 4)),
        r"tensor 'conv3.weight': shape mismatch.*codebook \(3, 4\)",
    ),
    "mask shape": (
        lambda sd: mutate(
            sd, "conv2.parametrizations.weight.0.mask", torch.ones(4, 1, 3, 2, dtype=torch.bool)
        ),
        r"tensor 'conv2.weight': shape mismatch",
    ),
    "hook mask shape": (
        lambda sd: mutate(sd, "conv1.bias_mask", torch.ones(5)),
        r"tensor 'conv1.bias': shape mismatch",
    ),
    "plain shape": (
        lambda sd: mutate(sd, "conv2.bias", torch.zeros(5)),
        r"tensor 'conv2.bias': shape mismatch, model has \(4,\), checkpoint \(5,\)",
    ),
    "missing key": (
        lambda sd: mutate(sd, "conv3.bias", None),
        r"missing keys \['conv3.bias'\]",
    ),
    "unexpected key": (
        lambda sd: mutate(sd, "head.weight", torch.zeros(2)),
        r"unexpected keys \['head.weight'\]",
    ),
    "unknown module": (
        lambda sd: mutate(sd, "head.parametrizations.weight.original", torch.zeros(2)),
        r"tensor 'head.weight'",
    ),
    "missing index": (
        lambda sd: mutate(sd, "emb.parametrizations.weight.0.index", None),
        r"tensor 'emb.weight': unrecognised reparametrization keys",
    ),
    "float index": (
        lambda sd: mutate(sd, "emb.parametrizations.weight.0.index", torch.zeros(12, 64)),
        r"tensor 'emb.weight': index must be an integer tensor",
    ),
    "code out of range": (
        lambda sd: mutate(
            sd, "fc.parametrizations.weight.0.index", torch.full((5, 76), 9, dtype=torch.uint8)
        ),
        r"tensor 'fc.weight': index codes must lie in \[0, 8\]",
    ),
    "malformed settings": (
        lambda sd: mutate(sd, "emb.parametrizations.weight.0._extra_state", {"num_centroids": 8}),
        r"tensor 'emb.weight': malformed sharing settings",
    ),
    "bits 0": (
        lambda sd: with_setting(sd, 1, 0),
        r"tensor 'emb.weight': malformed sharing settings: bits must be an int in \[1, 16\], got 0",
    ),
    "bits 99": (
        lambda sd: with_setting(sd, 1, 99),
        r"tensor 'emb.weight': .*bits must be an int in \[1, 16\], got 99",
    ),
    "unknown init code": (
        lambda sd: with_setting(sd, 4, 9),
        r"tensor 'emb.weight': .*init code must be one of \[0, 1, 2, 3, 4\], got 9",
    ),
    "unknown method code": (
        lambda sd: with_setting(sd, 5, -1),
        r"tensor 'emb.weight': .*method code must be one of",
    ),
    "too many centroids": (
        lambda sd: with_setting(sd, 6, 257),
        r"tensor 'emb.weight': .*num_centroids must be an int in \[0, 2\*\*bits = 256\], got 257",
    ),
    "newer state version": (
        lambda sd: with_setting(sd, 0, 2),
        r"tensor 'emb.weight': .*sharing state version must be 1, got 2",
    ),
    "state of a wrong dtype": (
        lambda sd: mutate(sd, EMB_STATE, sd[EMB_STATE].float()),
        r"tensor 'emb.weight': .*must be an int64 tensor of shape \(7,\), got torch.float32",
    ),
    "state of a wrong type": (
        lambda sd: mutate(sd, EMB_STATE, [1, 8, 0, 0, 0, 0, 256]),
        r"tensor 'emb.weight': .*must be an int64 tensor or a dict, got list",
    ),
    "dict state bits 99": (
        lambda sd: as_dict_state(sd, bits=99),
        r"tensor 'emb.weight': .*bits must be an int in \[1, 16\], got 99",
    ),
    "dict state bogus init": (
        lambda sd: as_dict_state(sd, init="bogus"),
        r"tensor 'emb.weight': .*init must be one of",
    ),
    "dict state method None": (
        lambda sd: as_dict_state(sd, method=None),
        r"tensor 'emb.weight': .*method must be a str",
    ),
    "dict state too many centroids": (
        lambda sd: as_dict_state(sd, bits=7),
        r"tensor 'emb.weight': .*num_centroids must be an int in \[0, 2\*\*bits = 128\]",
    ),
    "bad granularity": (
        lambda sd: as_dict_state(sd, granularity="per_row"),
        r"tensor 'emb.weight': .*granularity must be one of",
    ),
    "unknown granularity code": (
        lambda sd: with_setting(sd, 2, 2),
        r"tensor 'emb.weight': .*granularity code must be one of \[0, 1\], got 2",
    ),
    "not a tensor": (
        lambda sd: mutate(sd, "conv2.parametrizations.weight.0.mask", [True] * 36),
        r"tensor 'conv2.weight': 'conv2.parametrizations.weight.0.mask' must be a tensor, got list",
    ),
    "plain not a tensor": (
        lambda sd: mutate(sd, "conv3.bias", 0.5),
        r"tensor 'conv3.bias': expected a tensor, got float",
    ),
    "no such parameter": (
        lambda sd: mutate(
            mutate(
                sd, "fc.parametrizations.scale.original", sd["fc.parametrizations.bias.original"]
            ),
            "fc.parametrizations.scale.0.mask",
            torch.ones(5, dtype=torch.bool),
        ),
        r"tensor 'fc.scale': Linear has no parameter 'scale'",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_mismatched_checkpoint_leaves_fresh_model_unchanged(case):
    break_it, match = BAD[case]
    sd = break_it(roundtrip(compress(Net()).state_dict()))
    fresh = Net()
    before = module_state(fresh)
    y = fresh(TOKENS)
    with pytest.raises(CheckpointError, match=match) as info:
        load_state_dict(fresh, sd)
    assert isinstance(info.value, ValueError)
    after = module_state(fresh)
    assert after.keys() == before.keys()
    for key, value in before["__state_dict__"].items():
        assert bitwise_equal(after["__state_dict__"][key], value), key
    assert list(after["__state_dict__"]) == list(before["__state_dict__"])
    assert {k: v for k, v in after.items() if k != "__state_dict__"} == {
        k: v for k, v in before.items() if k != "__state_dict__"
    }
    assert not compressed_tensors(fresh) and not prune.is_pruned(fresh)
    assert bitwise_equal(fresh(TOKENS), y)


def test_loading_into_a_differently_compressed_model_is_refused():
    sd = Net().state_dict()
    target = level_prune(Net(), "gain", amount=0.5)
    with pytest.raises(
        CheckpointError, match=r"compresses \['gain'\], which the checkpoint stores plain"
    ):
        load_state_dict(target, sd)


# -- bake -------------------------------------------------------------------------------------
def plain_layout(module: nn.Module) -> dict:
    return {
        "class": type(module),
        "attrs": sorted(vars(module)),
        "params": sorted(module._parameters),
        "buffers": sorted(module._buffers),
        "pre_hooks": len(module._forward_pre_hooks),
        "hooks": len(module._forward_hooks),
    }


@pytest.mark.parametrize(
    "compress_it",
    [
        lambda m: level_prune(m, amount=0.5),
        lambda m: register_weight_sharing(m, bits=2),
        lambda m: register_weight_sharing(level_prune(m, amount=0.5), bits=2),
        lambda m: level_prune(register_weight_sharing(m, bits=8), amount=0.5),
        lambda m: register_weight_sharing(m, bits=2, granularity="per_channel"),
        lambda m: register_weight_sharing(prune.l1_unstructured(m, "weight", amount=0.3), bits=3),
    ],
    ids=["pruned", "shared", "prune_share", "share8_prune", "per_channel", "torch_hook_share"],
)
@pytest.mark.parametrize("how", ["remove_parametrizations", "bake"])
def test_bake(compress_it, how):
    reference = nn.Linear(16, 8)
    layout = plain_layout(reference)
    lin = compress_it(nn.Linear(16, 8))
    value = lin.weight.detach().clone()
    x = torch.randn(4, 16)
    y = lin(x)
    if how == "bake":
        assert bake(lin) is lin
    else:
        parametrize.remove_parametrizations(lin, "weight")  # one call
    assert type(lin.weight) is nn.Parameter and lin.weight.requires_grad
    assert bitwise_equal(lin.weight.detach(), value)
    assert bitwise_equal(lin(x), y)
    assert plain_layout(lin) == layout  # class, attributes, buffers, hooks as a fresh Linear
    assert sorted(lin.state_dict()) == ["bias", "weight"]
    assert not parametrize.is_parametrized(lin) and not prune.is_pruned(lin)
    lin(x).sum().backward()  # trains as a plain layer
    assert lin.weight.grad.shape == (8, 16)


def test_bake_model_clears_stale_gradients():
    net = compress(Net())
    net(TOKENS).sum().backward()
    outputs = net(TOKENS)
    bake(net)
    assert not compressed_tensors(net) and not prune.is_pruned(net)
    assert all(type(p) is nn.Parameter for p in net.parameters())
    assert sorted(dict(net.named_parameters())) == sorted(dict(Net().named_parameters()))
    assert [type(m) for m in net.modules()] == [type(m) for m in Net().modules()]
    assert bitwise_equal(net(TOKENS), outputs)
    baked = [
        "gain",
        "emb.weight",
        "conv1.weight",
        "conv1.bias",
        "conv2.weight",
        "conv3.weight",
        "fc.weight",
        "fc.bias",
    ]
    grads = {n: p.grad for n, p in net.named_parameters()}
    assert all(grads[n] is None for n in baked)
    assert grads["conv2.bias"] is not None  # plain parameters keep theirs
    net(TOKENS).sum().backward()  # no stale codebook-shaped gradient left behind


def test_deepcopy_does_not_share_the_parametrized_class():
    # torch gives a deep copy of a parametrized module the same injected class; removing or
    # adding a parametrization on the copy then changed the original.
    net = compress(Net(), torch_hook=False)
    y = net(TOKENS)
    twin = copy.deepcopy(net)
    assert type(twin.fc) is not type(net.fc)
    assert bitwise_equal(twin(TOKENS), y)
    bake(twin)
    assert type(twin.fc) is nn.Linear
    assert bitwise_equal(net(TOKENS), y) and parametrize.is_parametrized(net.fc, "weight")
    other = copy.deepcopy(net)
    level_prune(other.conv2, "bias", amount=0.5)
    assert not parametrize.is_parametrized(net.conv2, "bias")
    assert type(net.conv2.bias) is nn.Parameter
    assert bitwise_equal(net(TOKENS), y)
    assert bitwise_equal(copy.deepcopy(other)(TOKENS), other(TOKENS))


# -- docstrings -------------------------------------------------------------------------------
MODULES = [
    "parametrizations",
    "pruning",
    "sharing",
    "checkpoint",
    "codebook",
    "compat",
    "config",
    "evaluation",
    "levels",
    "names",
    "options",
    "prune_methods",
    "quantizer",
    "recommend",
    "results",
    "state",
]


def public_callables(module):
    for name, obj in vars(module).items():
        if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue
        if inspect.isfunction(obj):
            yield name, obj
        elif inspect.isclass(obj):
            yield name, obj
            for meth_name, meth in vars(obj).items():
                func = getattr(meth, "__func__", meth)
                if meth_name.startswith("_") or not inspect.isfunction(func):
                    continue
                if meth_name in (
                    "forward",
                    "right_inverse",
                    "extra_repr",
                    "get_extra_state",
                    "set_extra_state",
                    "setup_context",  # autograd.Function protocol
                    "backward",
                    "transform",  # LevelKind.transform, documented on the base class
                ):
                    continue  # nn.Module / parametrization protocol, documented by torch
                yield f"{name}.{meth_name}", func


@pytest.mark.parametrize("mod_name", MODULES)
def test_public_functions_have_torch_style_docstrings(mod_name):
    module = importlib.import_module(f"torchprune_share.{mod_name}")
    missing = []
    for name, obj in public_callables(module):
        doc = inspect.getdoc(obj) or ""
        params = (
            []
            if inspect.isclass(obj) and issubclass(obj, Exception)
            else [p for p in inspect.signature(obj).parameters if p not in ("self", "cls")]
        )
        if "Example:" not in doc or (params and "Args:" not in doc):
            missing.append(name)
    assert not missing, f"{mod_name}: missing Args/Example in {missing}"


@pytest.mark.parametrize("mod_name", MODULES)
def test_docstring_examples_run(mod_name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    module = importlib.import_module(f"torchprune_share.{mod_name}")
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    tests = [t for t in finder.find(module, globs=dict(vars(module))) if t.examples]
    assert len(tests) >= 2
    for test in tests:
        torch.manual_seed(0)
        runner.run(test)
    results = runner.summarize(verbose=False)
    assert results.failed == 0
