"""LevelPruner, Quantizer, schedules, recommendations, and the seed's code blocks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchprune_share import bits_analysis, level_prune, sensitivity
from torchprune_share.analysis import ScanResult
from torchprune_share.data import load_digits, make_loaders
from torchprune_share.models import LeNet300100
from torchprune_share.parametrizations import PruningMask, WeightSharing, get_reparametrization
from torchprune_share.policies import LevelPruner, Quantizer, recommend_bits, recommend_sparsities
from torchprune_share.schedules import AGPSchedule, ConstantSchedule
from torchprune_share.training import evaluate


@pytest.fixture(scope="module")
def loaders():
    return make_loaders(load_digits(seed=0), batch_size=64, seed=0)


class SeedNet(nn.Module):
    """A tiny AlexNet-shaped digits model: the seed's names features.0 / classifier.1 / .6."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(
            nn.Dropout(0.1),
            nn.Linear(8 * 4 * 4, 64),
            nn.ReLU(),
            nn.Dropout(0.1),
            nn.Linear(64, 64),
            nn.ReLU(),
            nn.Linear(64, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


def zeros(t: torch.Tensor) -> int:
    return int((t.detach() == 0).sum())


def test_seed_code_blocks_run_unchanged(tmp_path, monkeypatch, loaders):
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    loader, val_loader, _ = loaders
    model = SeedNet()
    criterion = nn.CrossEntropyLoss()
    validate_func = evaluate
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for inputs, labels in loader:  # a short training before the analyses
        optimizer.zero_grad()
        criterion(model(inputs), labels).backward()
        optimizer.step()

    # ---- the seed's code, as in the issue (its "[0.1, ..., 0.9]" and "..." written out) ----
    sens = sensitivity.perform_sensitivity_analysis(
        model, val_loader, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9], validate_func, criterion
    )
    sensitivity.sensitivities_to_png(sens, "prune_sens.png")
    sensitivity.sensitivities_to_csv(sens, "prune_sens.csv")
    bits = bits_analysis.perform_bits_analysis(
        model, val_loader, [6, 4, 2], validate_func, criterion
    )
    bits_analysis.sensitivities_to_png(bits, "bits.png")
    bits_analysis.sensitivities_to_csv(bits, "bits.csv")

    pruner = LevelPruner(options=[["features.0.weight", 0.35], ["classifier.1.weight", 0.8]])
    for inputs, labels in loader:
        optimizer.zero_grad()
        loss = criterion(model(inputs), labels)
        loss.backward()
        optimizer.step()
        pruner.prune(model=model, update_masks=False)
    quantizer = Quantizer(options=[("features.0.weight", 6), ("classifier.6.weight", 2)])
    with torch.no_grad():
        quantizer.quantize(model)
    # ---- end of the seed's code ----

    names = [
        "features.0.weight",
        "classifier.1.weight",
        "classifier.4.weight",
        "classifier.6.weight",
    ]
    assert list(sens) == names and list(bits) == names
    assert list(sens["classifier.1.weight"]) == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    assert list(bits["features.0.weight"]) == [2, 4, 6]
    for f in ("prune_sens.png", "bits.png"):
        assert (tmp_path / f).stat().st_size > 10_000
    lines = (tmp_path / "prune_sens.csv").read_text().splitlines()
    assert lines[0] == "parameter,level,accuracy,loss" and len(lines) == 1 + 4 * 9
    assert len((tmp_path / "bits.csv").read_text().splitlines()) == 1 + 4 * 3
    # Pruning held through the momentum steps; sharing kept the zeros and the widths.
    conv, fc1, fc3 = model.features[0], model.classifier[1], model.classifier[6]
    assert zeros(conv.weight) == round(0.35 * conv.weight.numel())
    assert zeros(fc1.weight) == round(0.8 * fc1.weight.numel())
    assert isinstance(get_reparametrization(conv, "weight"), WeightSharing)
    assert len(torch.unique(conv.weight.detach()[conv.weight.detach() != 0])) <= 2**6
    assert len(torch.unique(fc3.weight.detach())) <= 2**2
    assert isinstance(get_reparametrization(fc1, "weight"), PruningMask)
    # Fine-tuning goes on with a new optimizer (the codebooks are new parameters).
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    inputs, labels = next(iter(loader))
    criterion(model(inputs), labels).backward()
    optimizer.step()
    assert zeros(fc1.weight) == round(0.8 * fc1.weight.numel())


def test_level_pruner_rejects_bad_options_listing_all():
    with pytest.raises(ValueError) as err:
        LevelPruner([["fc1.weight", 1.5], ["fc2.weight", "x"], ["fc2.weight", 0.1], [3, 0.2]])
    msg = str(err.value)
    for part in ("1.5", "'x'", "duplicate names ['fc2.weight']", "3"):
        assert part in msg
    model = LeNet300100(8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruner = LevelPruner([["fc9.weight", 0.5], ["fc1.weight", 0.5], ["head.bias", 0.1]])
    with pytest.raises(ValueError) as err:
        pruner.prune(model)
    assert "fc9.weight" in str(err.value) and "head.bias" in str(err.value)
    assert list(model.state_dict()) == list(before)  # nothing applied, not even fc1
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    with pytest.raises(ValueError, match=r"fc9\.weight"):
        LevelPruner({"fc9.weight": 0.5}, model=model)


@pytest.mark.parametrize("update_masks", [False, True])
def test_level_pruner_exact_zeros_through_sgd_momentum(loaders, update_masks):
    torch.manual_seed(0)
    loader = loaders[0]
    model = LeNet300100(8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    pruner = LevelPruner({"fc1.weight": 0.8, "*": 0.55})
    targets = {model.fc1: 0.8, model.fc2: 0.55, model.fc3: 0.55}
    masks = None
    for step, (x, y) in enumerate(loader):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        pruner.prune(model=model, update_masks=update_masks)
        for module, s in targets.items():
            assert zeros(module.weight) == round(s * module.weight.numel()), (step, module)
        assert zeros(model.fc1.bias) == 0
        now = {m: get_reparametrization(m, "weight") for m in targets}
        if masks is not None and not update_masks:
            for m, reparam in now.items():  # kept masks: same module, same mask
                assert reparam is masks[m][0] and torch.equal(reparam.mask, masks[m][1])
        masks = {m: (r, r.mask.clone()) for m, r in now.items()}


def agp(t: int, si: float, sf: float, t0: int, te: int, dt: int) -> float:
    if t < t0:
        return 0.0
    if t >= te:
        return sf
    t = t0 + ((t - t0) // dt) * dt
    return sf + (si - sf) * (1 - (t - t0) / (te - t0)) ** 3


def test_agp_schedule_matches_formula():
    s = AGPSchedule(0.1, 0.85, start_step=10, end_step=110, frequency=7)
    for t in (0, 9, 10, 11, 16, 17, 50, 108, 109, 110, 111, 500):
        assert s.sparsity(t) == pytest.approx(agp(t, 0.1, 0.85, 10, 110, 7), abs=1e-12), t
    assert s.sparsity(10) == 0.1 and s.sparsity(110) == 0.85 and s.sparsity(109) < 0.85
    assert s.sparsity(17) == pytest.approx(0.85 - 0.75 * (1 - 7 / 100) ** 3)
    assert s.pruning_steps()[-2:] == [108, 110]
    c = ConstantSchedule(0.6, start_step=3)
    assert [c.sparsity(t) for t in (0, 2, 3, 99)] == [0.0, 0.0, 0.6, 0.6]
    with pytest.raises(ValueError, match="final"):
        AGPSchedule(0.5, 0.2, 0, 10)
    with pytest.raises(ValueError, match="end_step"):
        AGPSchedule(0.0, 0.5, 10, 10)
    with pytest.raises(ValueError, match="frequency"):
        AGPSchedule(0.0, 0.5, 0, 10, frequency=0)


def test_level_pruner_follows_agp_exactly():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(50, 40), nn.ReLU(), nn.Linear(40, 30))
    n0, n2 = net[0].weight.numel(), net[2].weight.numel()
    pruner = LevelPruner(
        {"0.weight": AGPSchedule(0.0, 0.9, 2, 20, 3), "2.weight": ConstantSchedule(0.5, 5)},
        model=net,
    )
    for t in range(25):
        got = pruner.step()
        assert t == pruner.last_step
        assert got["0.weight"] == pytest.approx(agp(t, 0.0, 0.9, 2, 20, 3), abs=1e-12)
        assert zeros(net[0].weight) == round(got["0.weight"] * n0), t
        assert zeros(net[2].weight) == (round(0.5 * n2) if t >= 5 else 0), t
    assert zeros(net[0].weight) == round(0.9 * n0)
    # prune(step=t) jumps straight to a step's target, and state_dict resumes the count.
    other = nn.Sequential(nn.Linear(50, 40))
    p2 = LevelPruner({"0.weight": AGPSchedule(0.0, 0.9, 2, 20, 3)})
    p2.prune(other, step=11)
    assert zeros(other[0].weight) == round(agp(11, 0.0, 0.9, 2, 20, 3) * n0)
    p3 = LevelPruner({"0.weight": AGPSchedule(0.0, 0.9, 2, 20, 3)}, model=other)
    p3.load_state_dict(p2.state_dict())
    p3.step()
    assert zeros(other[0].weight) == round(agp(12, 0.0, 0.9, 2, 20, 3) * n0)


def test_quantizer_validates_then_shares_and_reclusters():
    with pytest.raises(ValueError) as err:
        Quantizer(
            [("a.weight", 0), ("b.weight", 2.5), ("c.weight", 4, {"init": "nope"}), ("a.weight", 3)]
        )
    msg = str(err.value)
    for part in ("'a.weight': bits", "'b.weight'", "init must be one of", "duplicate"):
        assert part in msg
    torch.manual_seed(0)
    model = LeNet300100(8)
    level_prune(model.fc2, "weight", amount=0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"fc7\.weight"):
        Quantizer([("fc1.weight", 4), ("fc7.weight", 4)]).quantize(model)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())

    zero_pattern = model.fc2.weight.detach() == 0
    q = Quantizer(
        [("fc1.weight", 4), ("fc2.weight", 3, {"granularity": "per_channel"}), ("*", 5)],
        method="lloyd",
    )
    with torch.no_grad():
        q.quantize(model)
    fc1, fc2, fc3 = (get_reparametrization(m, "weight") for m in (model.fc1, model.fc2, model.fc3))
    assert (fc1.bits, fc2.bits, fc3.bits) == (4, 3, 5)
    assert fc2.granularity == "per_channel"
    assert model.fc2.parametrizations.weight.original.shape[0] == 100
    assert torch.equal(model.fc2.weight.detach() == 0, zero_pattern)
    assert len(torch.unique(model.fc1.weight.detach())) <= 16
    # Re-quantizing re-clusters: a new, narrower codebook, same zeros.
    assert model.fc1.parametrizations.weight.original.numel() == 16
    Quantizer({"fc1.weight": 2, "fc2.weight": 2}).quantize(model)
    assert get_reparametrization(model.fc1, "weight").bits == 2
    assert model.fc1.parametrizations.weight.original.numel() == 4
    assert len(torch.unique(model.fc1.weight.detach())) == 4
    assert torch.equal(model.fc2.weight.detach() == 0, zero_pattern)


def test_recommendations_turn_scans_into_options():
    sens = ScanResult(
        {
            "fc1.weight": {
                0.5: {"accuracy": 97.5},
                0.7: {"accuracy": 97.2},
                0.9: {"accuracy": 90.0},
            },
            "fc2.weight": {
                0.5: {"accuracy": 96.0},
                0.7: {"accuracy": 97.9},
                0.9: {"accuracy": 97.9},
            },
        },
        baseline={"accuracy": 98.0, "loss": 0.1},
    )
    assert recommend_sparsities(sens, max_drop=1.0) == [["fc1.weight", 0.7], ["fc2.weight", 0.0]]
    assert recommend_sparsities(sens, max_drop=2.5) == [["fc1.weight", 0.7], ["fc2.weight", 0.9]]
    loss = ScanResult(
        {"w": {0.2: {"loss": 0.15}, 0.4: {"loss": 0.3}}}, baseline={"loss": 0.1, "accuracy": 1}
    )
    assert recommend_sparsities(loss, max_drop=0.1, metric="loss") == [["w", 0.2]]
    bits = ScanResult(
        {
            "fc1.weight": {2: {"accuracy": 90.0}, 4: {"accuracy": 97.6}, 6: {"accuracy": 98.0}},
            "fc2.weight": {2: {"accuracy": 95.0}, 4: {"accuracy": 95.0}, 6: {"accuracy": 96.0}},
        },
        baseline={"accuracy": 98.0},
    )
    assert recommend_bits(bits, max_drop=0.5) == [["fc1.weight", 4]]  # fc2 left out (warned)
    with pytest.raises(ValueError, match="baseline"):
        recommend_bits({"w": {4: {"accuracy": 1.0}}})
    assert recommend_bits({"w": {4: {"accuracy": 1.0}}}, baseline=1.0) == [["w", 4]]

    # The options feed the policies directly.
    model = LeNet300100(8)
    LevelPruner(recommend_sparsities(sens, max_drop=2.5)).prune(model)
    Quantizer(recommend_bits(bits, max_drop=0.5)).quantize(model)
    assert zeros(model.fc2.weight) == round(0.9 * 30000)
    assert isinstance(get_reparametrization(model.fc1, "weight"), WeightSharing)


def test_level_pruner_on_shared_and_torch_pruned_tensors():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(30, 20), nn.Linear(20, 10))
    Quantizer({"0.weight": 3}).quantize(net)
    torch.nn.utils.prune.random_unstructured(net[1], "weight", amount=0.2)
    pruner = LevelPruner({"0.weight": 0.5, "1.weight": 0.6})
    pruner.prune(net)
    assert isinstance(get_reparametrization(net[0], "weight"), WeightSharing)  # zero codes
    assert isinstance(get_reparametrization(net[1], "weight"), PruningMask)  # mask adopted
    assert zeros(net[0].weight) == 300 and zeros(net[1].weight) == 120
    for _ in range(2):  # recomputing keeps the counts; shared zeros stay zero
        before = net[0].weight.detach() == 0
        pruner.prune(net, update_masks=True)
        assert zeros(net[0].weight) == 300 and zeros(net[1].weight) == 120
        assert torch.equal(net[0].weight.detach() == 0, before)
