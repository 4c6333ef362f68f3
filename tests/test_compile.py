"""torch.compile (inductor, CPU) of a pruned + shared model: forward and backward."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from torchprune_share import level_prune, register_weight_sharing


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # emitted inside torch's inductor
def test_compile_forward_backward_matches_eager():
    torch._dynamo.reset()
    net = nn.Sequential(
        nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4)
    )
    level_prune(net[0], amount=0.5)
    register_weight_sharing(net[0], bits=3)
    level_prune(net[2], amount=0.5)  # PruningMask only
    register_weight_sharing(net[4], bits=2, granularity="per_channel")
    eager = copy.deepcopy(net)
    compiled = torch.compile(net)
    x = torch.randn(8, 16)

    y = compiled(x)
    y.pow(2).sum().backward()
    y_ref = eager(x)
    y_ref.pow(2).sum().backward()
    torch.testing.assert_close(y, y_ref)
    grads = dict(net.named_parameters())
    for name, p in eager.named_parameters():
        torch.testing.assert_close(grads[name].grad, p.grad, msg=name)
    zero_code = net[0].parametrizations.weight[0].num_centroids
    assert net[0].parametrizations.weight.original.grad.shape == (zero_code,)

    # After the index changes (pruning a shared tensor), the compiled model follows.
    level_prune(net[4], amount=0.5)
    level_prune(eager[4], amount=0.5)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), eager(x))
        assert int((net[4].weight == 0).sum()) == 64
