"""SharingConfig: the one owner of the sharing settings, their rules and their byte codes."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from torchprune_share import (
    BitLevels,
    Quantizer,
    WeightSharing,
    fileformat,
    kmeans,
    recluster,
    register_weight_sharing,
)
from torchprune_share.config import (
    ALGORITHMS,
    CODES,
    GRANULARITIES,
    SharingConfig,
    code_of,
    value_of,
)


def test_defaults_and_normalisation():
    import numpy as np

    cfg = SharingConfig(bits=np.int64(3), channel_axis=np.int32(-1), damping=1)
    assert (cfg.bits, cfg.channel_axis, cfg.damping) == (3, -1, 1.0)
    assert type(cfg.bits) is int and type(cfg.channel_axis) is int and type(cfg.damping) is float
    assert SharingConfig() == SharingConfig(
        bits=4,
        granularity="per_tensor",
        channel_axis=0,
        init="auto",
        method="lloyd",
        algorithm="hessian",
        damping=0.1,
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.bits = 2  # type: ignore[misc]
    assert hash(cfg) == hash(SharingConfig(bits=3, channel_axis=-1, damping=1.0))


@pytest.mark.parametrize(
    ("field", "value", "exc", "match"),
    [
        ("bits", 0, ValueError, r"bits must be an int in \[1, 16\], got 0"),
        ("bits", 17, ValueError, r"bits must be an int in \[1, 16\], got 17"),
        ("bits", 99, ValueError, r"bits must be an int in \[1, 16\]"),
        ("bits", 4.0, TypeError, r"bits must be an int in \[1, 16\], got float"),
        ("bits", "4", TypeError, r"bits must be an int in \[1, 16\], got str"),
        ("bits", True, TypeError, r"bits must be an int in \[1, 16\], got bool"),
        ("bits", None, TypeError, "bits must be an int"),
        ("granularity", "bogus", ValueError, r"granularity must be one of \('per_tensor'"),
        ("granularity", 0, TypeError, "granularity must be a str"),
        ("channel_axis", "0", TypeError, "channel_axis must be an int, got str"),
        ("channel_axis", 0.0, TypeError, "channel_axis must be an int, got float"),
        ("init", "zeros", ValueError, r"init must be one of \('linear', 'density'"),
        ("init", None, TypeError, "init must be a str"),
        ("method", "magic", ValueError, r"method must be one of \('lloyd'"),
        ("algorithm", "newton", ValueError, r"algorithm must be one of \('hessian'"),
        ("damping", 0.0, ValueError, r"damping must be a float in \(0, 1\], got 0.0"),
        ("damping", 1.5, ValueError, r"damping must be a float in \(0, 1\]"),
        ("damping", float("nan"), ValueError, r"damping must be a float in \(0, 1\]"),
        ("damping", "0.1", TypeError, r"damping must be a float in \(0, 1\], got str"),
    ],
)
def test_every_field_is_checked_with_the_convention(field, value, exc, match):
    with pytest.raises(exc, match=match):
        SharingConfig(**{field: value})


def test_from_mapping_and_replace_validate_again():
    base = SharingConfig(bits=3, init="density")
    assert SharingConfig.from_mapping({"bits": 2}, base=base) == SharingConfig(
        bits=2, init="density"
    )
    assert base.replace(granularity="per_channel").granularity == "per_channel"
    with pytest.raises(ValueError, match="bits must be"):
        base.replace(bits=0)
    with pytest.raises(TypeError, match=r"unknown sharing settings \['colour'\]"):
        SharingConfig.from_mapping({"colour": "red"})
    with pytest.raises(TypeError, match="settings must be a dict"):
        SharingConfig.from_mapping([("bits", 2)])  # type: ignore[arg-type]


def test_check_tensor():
    SharingConfig(granularity="per_channel", channel_axis=-2).check_tensor(2)
    SharingConfig(channel_axis=7).check_tensor(2)  # per tensor: the axis is unused
    with pytest.raises(
        ValueError, match=r"channel_axis must be in \[-2, 1\] for a 2-D tensor, got -3"
    ):
        SharingConfig(granularity="per_channel", channel_axis=-3).check_tensor(2)
    with pytest.raises(ValueError, match="at least one dimension"):
        SharingConfig(granularity="per_channel").check_tensor(0)


# -- byte codes ---------------------------------------------------------------------------
def test_every_value_has_a_byte_code():
    """Fails when a new init, method or granularity is added without a byte code."""
    assert tuple(CODES["init"]) == kmeans.INITS
    assert tuple(CODES["method"]) == kmeans.METHODS
    assert tuple(CODES["granularity"]) == GRANULARITIES
    for setting, table in CODES.items():
        codes = list(table.values())
        assert len(set(codes)) == len(codes), f"{setting}: two values share a code"
        assert all(0 <= c <= 255 for c in codes), f"{setting}: a code does not fit a byte"
        for value, code in table.items():
            assert code_of(setting, value) == code and value_of(setting, code) == value


def test_byte_codes_are_those_of_format_version_1():
    """The codes the .tpsc writer of 0.1.0 wrote (position in its tables): frozen; a later
    value takes the next free code ("dp")."""
    assert CODES == {
        "granularity": {"per_tensor": 0, "per_channel": 1},
        "init": {"linear": 0, "density": 1, "random": 2, "kmeans++": 3, "dp": 4},
        "method": {"lloyd": 0, "optimal": 1, "sklearn": 2},
    }
    # While the file format still keeps its own tables, they must agree.
    for setting, table in (("init", "INITS"), ("method", "METHODS")):
        if hasattr(fileformat, table):
            assert {v: i for i, v in enumerate(getattr(fileformat, table))} == CODES[setting]


def test_unknown_codes_are_refused():
    with pytest.raises(ValueError, match=r"init code must be one of \[0, 1, 2, 3, 4\], got 9"):
        value_of("init", 9)
    with pytest.raises(ValueError, match="method must be one of"):
        code_of("method", "magic")
    with pytest.raises(ValueError, match="setting must be one of"):
        code_of("colour", "red")
    assert ALGORITHMS == ("hessian", "diagonal", "fisher")


# -- every entry point validates through it ---------------------------------------------
def test_weight_sharing_constructor_validates():
    index = torch.zeros(4, dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"bits must be an int in \[1, 16\], got 99"):
        WeightSharing(index, bits=99)
    with pytest.raises(ValueError, match="granularity must be one of"):
        WeightSharing(index, bits=2, granularity="bogus")
    with pytest.raises(TypeError, match="needs bits= or config="):
        WeightSharing(index)
    with pytest.raises(TypeError, match="index must be an integer tensor"):
        WeightSharing(torch.zeros(4), bits=2)
    with pytest.raises(TypeError, match="codebook must be a floating-point tensor"):
        WeightSharing(index, torch.zeros(2, dtype=torch.int64), bits=2)
    ws = WeightSharing(index, bits=3, config=None, init="density")
    assert ws.config == SharingConfig(bits=3, init="density") and ws.bits == 3


def test_register_and_recluster_take_a_config():
    torch.manual_seed(0)
    a, b = nn.Linear(16, 8), nn.Linear(16, 8)
    b.load_state_dict(a.state_dict())
    cfg = SharingConfig(bits=2, granularity="per_channel", init="density")
    register_weight_sharing(a, "weight", 2, granularity="per_channel", init="density")
    register_weight_sharing(b, "weight", config=cfg)
    assert torch.equal(a.weight, b.weight)
    assert b.parametrizations.weight[0].config == cfg
    with pytest.raises(TypeError, match=r"pass either config= or \['bits'\], not both"):
        register_weight_sharing(nn.Linear(4, 4), bits=3, config=cfg)
    with pytest.raises(TypeError, match="config must be a SharingConfig"):
        register_weight_sharing(nn.Linear(4, 4), config={"bits": 2})  # type: ignore[arg-type]
    recluster(b, config=SharingConfig(bits=1))
    assert b.parametrizations.weight.original.shape == (2,)
    recluster(b, bits=2)  # keeps the other settings of the current config
    # The stored config is what ran: "auto" without data is the linear init.
    assert b.parametrizations.weight[0].config == SharingConfig(bits=2, init="linear")
    with pytest.raises(ValueError, match="bits must be"):
        recluster(b, bits=0)
    assert b.parametrizations.weight[0].bits == 2


def test_quantizer_and_bit_levels_validate_through_it():
    with pytest.raises(ValueError, match="init must be one of"):
        Quantizer({"*": 4}, init="bogus")
    with pytest.raises(TypeError, match="channel_axis must be an int"):
        Quantizer({"*": 4}, channel_axis="0")
    with pytest.raises(ValueError, match=r"'\*': damping must be a float in \(0, 1\]"):
        Quantizer([("*", 4, {"damping": 2.0})])
    with pytest.raises(TypeError, match=r"'\*': unknown sharing settings \['colour'\]"):
        Quantizer([("*", 4, {"colour": "red"})])
    with pytest.raises(TypeError, match="channel_axis must be an int, got str"):
        BitLevels(channel_axis="0")
    with pytest.raises(ValueError, match="granularity must be one of"):
        BitLevels(granularity="bogus")
    net = nn.Sequential(nn.Linear(8, 4), nn.Linear(4, 2))
    q = Quantizer({"0.weight": SharingConfig(bits=2, granularity="per_channel"), "*": 3})
    q.quantize(net)
    assert (
        net[0].parametrizations.weight[0].config
        == SharingConfig(bits=2, granularity="per_channel").resolved()
    )
    assert net[1].parametrizations.weight[0].config == SharingConfig(bits=3, init="linear")
    levels = BitLevels(config=SharingConfig(granularity="per_channel"))
    assert levels.granularity == "per_channel"


def test_every_calibration_default_is_the_owners():
    # A default written twice drifts: every signature must show the owner's value.
    import inspect

    from torchprune_share import LevelPruner, Quantizer
    from torchprune_share.calibration import engine, hessian, matrix
    from torchprune_share.calibration.apply import prune_calibrated
    from torchprune_share.config import (
        DEFAULT_ALGORITHM,
        DEFAULT_ASYMMETRIC,
        DEFAULT_AUGMENT,
        DEFAULT_DAMPING,
        DEFAULT_SEQUENTIAL,
    )

    owners = {
        "algorithm": DEFAULT_ALGORITHM,
        "damping": DEFAULT_DAMPING,
        "sequential": DEFAULT_SEQUENTIAL,
        "asymmetric": DEFAULT_ASYMMETRIC,
        "augment": DEFAULT_AUGMENT,
    }
    functions = [
        LevelPruner.__init__,
        LevelPruner.prune,
        Quantizer.__init__,
        Quantizer.quantize,
        engine.calibrate,
        hessian.inverse_cholesky,
        matrix.share_matrix,
        matrix.prune_matrix,
        prune_calibrated,
    ]
    seen = {name: 0 for name in owners}
    for fn in functions:
        for name, param in inspect.signature(fn).parameters.items():
            if name in owners:
                assert param.default == owners[name], (fn.__qualname__, name)
                seen[name] += 1
    assert all(seen.values()), seen
    assert SharingConfig().algorithm == DEFAULT_ALGORITHM
    assert SharingConfig().damping == DEFAULT_DAMPING


def test_every_init_default_is_the_owners():
    import inspect

    from torchprune_share import BitLevels, Quantizer, register_weight_sharing
    from torchprune_share.bits_analysis import perform_bits_analysis
    from torchprune_share.calibration import matrix
    from torchprune_share.codebook import cluster
    from torchprune_share.config import CALIBRATED_INIT, DEFAULT_INIT
    from torchprune_share.parametrizations import WeightSharing

    for fn in (
        register_weight_sharing,
        cluster,
        Quantizer.__init__,
        WeightSharing.__init__,
        BitLevels.__init__,
        perform_bits_analysis,
    ):
        assert inspect.signature(fn).parameters["init"].default == DEFAULT_INIT, fn
    assert SharingConfig().init == DEFAULT_INIT == "auto"
    # The calibrated numeric core receives a resolved init; its default is "auto"'s.
    assert inspect.signature(matrix.share_matrix).parameters["init"].default == CALIBRATED_INIT
    assert SharingConfig().resolved(calibrated=True).init == CALIBRATED_INIT


def test_auto_init_is_linear_without_data_bitwise_and_is_stored_resolved():
    from torchprune_share import register_weight_sharing

    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, 40, generator=g)
    shared = {}
    for init in ("auto", "linear"):
        lin = torch.nn.Linear(40, 16)
        with torch.no_grad():
            lin.weight.copy_(w)
        register_weight_sharing(lin, bits=3, init=init, granularity="per_channel")
        shared[init] = lin
    a, b = (shared[i].parametrizations.weight for i in ("auto", "linear"))
    assert torch.equal(a.original, b.original) and torch.equal(a[0].index, b[0].index)
    assert a[0].config == b[0].config and a[0].init == "linear"
    assert torch.equal(a[0].get_extra_state(), b[0].get_extra_state())
    assert SharingConfig(init="auto").to_state(8)[4] == CODES["init"]["linear"]
    with pytest.raises(ValueError, match="init must be one of"):
        SharingConfig(init="automatic")
