"""The scan engine and its faces: exact restore, values, CSV and PNG output, options."""

from __future__ import annotations

import copy
import csv
import doctest
import importlib
import struct

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from torchprune_share import (
    SigmaThresholdPruningMethod,
    level_prune,
    recluster,
    register_weight_sharing,
)
from torchprune_share.analysis import (
    BitLevels,
    PruningMethodLevels,
    ScanResult,
    SparsityLevels,
    default_parameter_names,
    make_evaluator,
    named_tensors,
    resolve_tensor,
    scan,
)
from torchprune_share.bits_analysis import perform_bits_analysis
from torchprune_share.data import load_digits, make_loaders
from torchprune_share.models import LeNet300100
from torchprune_share.sensitivity import (
    perform_sensitivity_analysis,
    sensitivities_to_csv,
    sensitivities_to_png,
)
from torchprune_share.training import evaluate, train

from .conftest import assert_same_state, module_state


@pytest.fixture(scope="module")
def digits():
    torch.manual_seed(0)
    splits = load_digits(seed=0)
    train_loader, val_loader, _ = make_loaders(splits, seed=0)
    model = LeNet300100(splits.image_size)
    train(model, train_loader, epochs=4, lr=0.1, progress=False)
    return model.state_dict(), val_loader


def fresh(digits) -> LeNet300100:
    model = LeNet300100(8)
    model.load_state_dict(digits[0])
    return model


class Net(nn.Module):
    """A conv (4-D weight) and three linears: every kind of tensor a scan meets."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc1 = nn.Linear(4 * 64, 32)
        self.fc2 = nn.Linear(32, 32)
        self.fc3 = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv(x)).flatten(1)
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def compressed_net() -> Net:
    """conv plain, fc1 masked, fc2 pruned + shared, fc3 pruned with torch's hooks."""
    torch.manual_seed(1)
    net = Net()
    level_prune(net.fc1, "weight", amount=0.5)
    level_prune(net.fc2, "weight", amount=0.3)
    register_weight_sharing(net.fc2, "weight", bits=3)
    prune.l1_unstructured(net.fc3, "weight", amount=0.4)
    return net


def bits_of(t: torch.Tensor) -> torch.Tensor:
    """The raw bits of a tensor, so that -0.0 != 0.0 and NaN payloads count."""
    t = t.detach().contiguous()
    if t.is_floating_point():
        return t.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])
    return t


def snapshot(model: nn.Module) -> dict:
    state = {k: bits_of(v).clone() for k, v in model.state_dict().items() if torch.is_tensor(v)}
    attrs = {}
    for name, m in model.named_modules():
        for hook in m._forward_pre_hooks.values():
            if isinstance(hook, prune.BasePruningMethod):
                attrs[name] = bits_of(getattr(m, hook._tensor_name)).clone()
    return {
        "state": state,
        "keys": list(model.state_dict()),
        "params": [(n, id(p), p.requires_grad) for n, p in model.named_parameters()],
        "buffers": [(n, id(b), b.dtype) for n, b in model.named_buffers()],
        "modules": [(n, type(m).__name__) for n, m in model.named_modules()],
        "hook_attrs": attrs,
        "training": [m.training for m in model.modules()],
        "grads": {
            n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()
        },
    }


def assert_same(before: dict, after: dict) -> None:
    assert after["keys"] == before["keys"]
    assert after["params"] == before["params"]
    assert after["buffers"] == before["buffers"]
    assert after["modules"] == before["modules"]
    assert after["training"] == before["training"]
    for k, v in before["state"].items():
        assert v.dtype == after["state"][k].dtype and torch.equal(v, after["state"][k]), k
    for k, v in before["hook_attrs"].items():
        assert torch.equal(v, after["hook_attrs"][k]), k
    for k, g in before["grads"].items():
        got = after["grads"][k]
        assert (g is None and got is None) or torch.equal(g, got), k


def test_scan_restores_every_kind_of_tensor_bitwise():
    net = compressed_net()
    x, y = torch.rand(64, 1, 8, 8), torch.randint(0, 10, (64,))
    net.train()
    net(x).sum().backward()  # gradients present: the scan must not touch them
    net.conv.weight.data[0, 0, 0, 0] = -0.0  # a negative zero survives bitwise
    before = snapshot(net)
    state = module_state(net)  # the suite's own view: classes, hooks, attributes too

    def validate(model: nn.Module) -> dict:
        assert torch.is_inference_mode_enabled() and not model.training
        out = model(x)
        return {"accuracy": float((out.argmax(1) == y).float().mean()), "loss": float(out.std())}

    names = default_parameter_names(net)
    assert names == ["conv.weight", "fc1.weight", "fc2.weight", "fc3.weight"]
    sens = perform_sensitivity_analysis(net, None, [0.0, 0.3, 0.6, 0.9], validate, progress=False)
    assert_same(before, snapshot(net))
    bits = perform_bits_analysis(net, None, [1, 2, 4], validate, progress=False)
    assert_same(before, snapshot(net))
    custom = scan(
        net,
        [0.5, 1.0],
        make_evaluator(None, validate),
        kind=PruningMethodLevels(SigmaThresholdPruningMethod, "q"),
        param_names=["fc2.weight", "fc3.weight", "fc1.bias"],
        progress=False,
    )
    assert_same(before, snapshot(net))
    assert_same_state(net, state)
    assert list(sens) == names and list(bits) == names
    assert list(custom) == ["fc2.weight", "fc3.weight", "fc1.bias"]
    # fc1 is half pruned already: levels up to 0.5 leave it unchanged, so reuse the baseline.
    assert sens["fc1.weight"][0.3] == sens.baseline == sens["conv.weight"][0.0]
    assert sens["fc1.weight"][0.9] != sens.baseline
    # The compressed model still trains after the scans (no inference tensor leaked into it).
    net(x).sum().backward()


@pytest.mark.parametrize("level", [0.25, 0.5, 0.9])
def test_sparsity_point_equals_real_pruning(digits, level):
    model = fresh(digits)
    val = digits[1]
    sens = perform_sensitivity_analysis(model, val, [level], evaluate, progress=False)
    for qualified, module_name in [("fc1.weight", "fc1"), ("fc3.weight", "fc3")]:
        ref = copy.deepcopy(model)
        module = getattr(ref, module_name)
        level_prune(module, "weight", amount=round(level * module.weight.numel()))
        acc, loss = evaluate(ref, val)
        assert sens[qualified][level] == {"accuracy": acc, "loss": loss}


def test_bits_point_equals_real_sharing(digits):
    model = fresh(digits)
    val = digits[1]
    level_prune(model.fc2, "weight", amount=0.6)  # sharing a pruned tensor keeps its zeros
    bits = perform_bits_analysis(model, val, [2, 5], evaluate, progress=False)
    assert list(bits["fc2.weight"]) == [2, 5]
    for b in (2, 5):
        for module_name in ("fc1", "fc2"):
            ref = copy.deepcopy(model)
            register_weight_sharing(getattr(ref, module_name), "weight", bits=b)
            acc, loss = evaluate(ref, val)
            assert bits[f"{module_name}.weight"][b] == {"accuracy": acc, "loss": loss}
    # A shared tensor is scanned as a re-clustering of its values.
    register_weight_sharing(model.fc3, "weight", bits=6)
    again = perform_bits_analysis(model, val, [2], param_names=["fc3.weight"], progress=False)
    ref = copy.deepcopy(model)
    recluster(ref.fc3, "weight", bits=2)
    acc, loss = evaluate(ref, val)
    assert again["fc3.weight"][2] == {"accuracy": acc, "loss": loss}


def test_csv_content(tmp_path, digits):
    model = fresh(digits)
    levels = [0.1 + 0.2, 0.15000000000000002, 0.7, 0.0]
    sens = perform_sensitivity_analysis(model, digits[1], levels, progress=False)
    path = sensitivities_to_csv(sens, tmp_path / "sens.csv")
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["parameter", "level", "accuracy", "loss"]
    assert len(rows) == 1 + 3 * 4
    assert [r[1] for r in rows[1:5]] == ["0.0", "0.15", "0.3", "0.7"]
    assert [r[0] for r in rows[1::4]] == ["fc1.weight", "fc2.weight", "fc3.weight"]
    for r in rows[1:]:
        metrics = sens[r[0]][float(r[1])]
        assert float(r[2]) == metrics["accuracy"] and float(r[3]) == metrics["loss"]

    # Extra metrics get their own columns; (model) -> dict validate functions work.
    def validate(m):
        acc, loss = evaluate(m, digits[1])
        return {"loss": loss, "accuracy": acc, "error": 100 - acc}

    extra = perform_sensitivity_analysis(model, None, [0.5], validate, progress=False)
    lines = extra.to_csv(tmp_path / "extra.csv").read_text().splitlines()
    assert lines[0] == "parameter,level,accuracy,loss,error"
    assert lines[1].startswith("fc1.weight,0.5,")


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_png_written_and_readable_for_many_layers(tmp_path):
    import matplotlib.image

    levels = [0.1, 0.5, 0.9]
    many = ScanResult(
        {
            f"layer{i}.weight": {s: {"accuracy": 90 - 10 * s * i, "loss": 0.1 + s} for s in levels}
            for i in range(24)
        },
        kind="sparsity",
        baseline={"accuracy": 91.0, "loss": 0.1},
    )
    few = ScanResult(dict(list(many.items())[:3]), kind="sparsity", baseline=many.baseline)
    p_few = sensitivities_to_png(few, tmp_path / "few.png")
    p_many = sensitivities_to_png(many, tmp_path / "many.png", metric="loss")
    for p in (p_few, p_many):
        assert p.stat().st_size > 15_000
    (w_few, h_few), (w_many, h_many) = png_size(p_few), png_size(p_many)
    assert 700 < w_few < 1500 and 400 < h_few < 800
    assert w_many > w_few  # a second legend column, outside the axes
    pixels = matplotlib.image.imread(p_many)
    assert pixels.shape[:2] == (h_many, w_many) and float(pixels.std()) > 0.05
    with pytest.raises(ValueError, match="metric"):
        sensitivities_to_png(few, tmp_path / "x.png", metric="top5")


def test_stop_below_and_max_batches(digits):
    model = fresh(digits)
    val = digits[1]
    seen = []

    def validate(m, loader, criterion):
        batches = list(loader)
        seen.append(len(batches))
        return evaluate(m, batches, criterion)

    levels = [0.5, 0.9, 0.99, 1.0]
    full = perform_sensitivity_analysis(model, val, levels, validate, progress=False)
    stopped = perform_sensitivity_analysis(
        model, val, levels, validate, stop_below=50.0, progress=False
    )
    for name, points in full.items():
        expect = []
        for level in levels:
            expect.append(level)
            if points[level]["accuracy"] < 50.0:
                break
        assert list(stopped[name]) == expect
        assert all(stopped[name][lv] == points[lv] for lv in expect)
    assert any(len(stopped[n]) < len(levels) for n in stopped)
    assert set(seen) == {1}  # the digits loader has one batch of 512; max_batches below

    small = make_loaders(load_digits(seed=0), eval_batch_size=50)[1]
    seen.clear()
    perform_sensitivity_analysis(model, small, [0.5], validate, max_batches=2, progress=False)
    assert set(seen) == {2}


def test_bits_scan_walks_down_and_stops():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 16))
    order = []

    class Spy(BitLevels):
        def transform(self, value, keep, level):
            order.append(level)
            return super().transform(value, keep, level)

    ev = make_evaluator(None, lambda m: {"accuracy": float(len(torch.unique(m[0].weight)))})
    r = scan(net, [2, 6, 4, 1], ev, kind=Spy(), stop_below=5, progress=False)
    assert order == [6, 4, 2]  # widest first; 2 bits leave 4 values < 5: stop before 1
    assert list(r["0.weight"]) == [2, 4, 6]


def test_validate_func_results_and_errors(digits):
    model = fresh(digits)
    triple = perform_sensitivity_analysis(
        model, digits[1], [0.5], lambda m, loader, c: (1.0, 2.0, 3.0), progress=False
    )
    assert triple["fc1.weight"][0.5] == {"accuracy": 1.0, "top5": 2.0, "loss": 3.0}
    with pytest.raises(ValueError, match=r"fc9\.weight.*|no module"):
        perform_sensitivity_analysis(model, digits[1], [0.5], param_names=["fc9.weight"])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        perform_sensitivity_analysis(model, digits[1], [0.5, 1.5])
    with pytest.raises(TypeError, match=r"bits must be an int in \[1, 16\], got float"):
        perform_bits_analysis(model, digits[1], [4, 2.5])
    with pytest.raises(ValueError, match=r"bits must be an int in \[1, 16\], got 17"):
        perform_bits_analysis(model, digits[1], [4, 17])
    with pytest.raises(ValueError, match="duplicate"):
        perform_sensitivity_analysis(model, digits[1], [0.5], param_names=["fc1.weight"] * 2)
    with pytest.raises(TypeError, match="validate_func must return"):
        perform_sensitivity_analysis(model, digits[1], [0.5], lambda *a: "bad", progress=False)


def test_names_resolve_internal_and_user_facing():
    net = compressed_net()
    assert [q for q, _, _ in named_tensors(net)] == [
        "conv.weight",
        "conv.bias",
        "fc1.weight",
        "fc1.bias",
        "fc2.weight",
        "fc2.bias",
        "fc3.weight",
        "fc3.bias",
    ]
    for q in ("fc1.weight", "fc1.parametrizations.weight.original"):
        assert resolve_tensor(net, q) == (net.fc1, "weight")
    assert resolve_tensor(net, "fc3.weight_orig") == (net.fc3, "weight")
    with pytest.raises(ValueError, match="no parameter"):
        resolve_tensor(net, "fc1.weird")


def test_sparsity_levels_respect_existing_mask():
    value = torch.tensor([0.0, 0.5, -0.2, 0.0, 0.3, 0.1])
    keep = torch.tensor([False, True, True, False, True, True])
    kind = SparsityLevels()
    assert kind.transform(value, keep, 0.3) is value  # round(1.8) = 2 zeros exist already
    out = kind.transform(value, keep, 0.5)
    assert torch.equal(out != 0, torch.tensor([False, True, True, False, True, False]))
    assert kind.normalize([0.3, 0.1 + 0.2, 0.0]) == [0.0, 0.3]


@pytest.mark.parametrize(
    "name", ["analysis", "sensitivity", "bits_analysis", "policies", "schedules", "summary"]
)
def test_docstring_examples_run(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    module = importlib.import_module(f"torchprune_share.{name}")
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    tests = [t for t in finder.find(module, globs=dict(vars(module))) if t.examples]
    assert tests
    for test in tests:
        torch.manual_seed(0)
        runner.run(test)
    assert runner.summarize(verbose=False).failed == 0


def test_scan_of_a_foreign_parametrization_restores_it():
    from torch.nn.utils import parametrize

    class Symmetric(nn.Module):
        def forward(self, x):
            return x.triu() + x.triu(1).transpose(0, 1)

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 6), nn.Linear(6, 2))
    parametrize.register_parametrization(net[0], "weight", Symmetric())
    state = module_state(net)
    x = torch.randn(16, 6)
    seen = []

    def validate(m):
        seen.append((int((m[0].weight == 0).sum()), int((m[1].weight == 0).sum())))
        return {"loss": float(m(x).square().mean())}

    r = perform_sensitivity_analysis(net, None, [0.5], validate, progress=False)
    assert seen == [(0, 0), (18, 0), (0, 6)]  # baseline, then 50 % of 36 and of 12
    assert list(r) == ["0.weight", "1.weight"]
    assert_same_state(net, state)
    assert len(net[0].parametrizations.weight) == 1


def test_param_names_star_adds_to_the_defaults():
    net = compressed_net()
    r = perform_sensitivity_analysis(
        net, None, [0.5], lambda m: {"accuracy": 1.0}, param_names=["fc1.bias", "*"], progress=False
    )
    assert list(r) == ["fc1.bias", "conv.weight", "fc1.weight", "fc2.weight", "fc3.weight"]
