"""Models torch-pruning cannot trace whole (ShuffleNetV2's channel shuffle): surgery cuts inside the parts it can
trace, keeps the rest dense with the reason, verifies the whole model, and the slim model reloads from its spec."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from edgeprune.checkpoint import load_checkpoint, save_checkpoint
from edgeprune.models import create_model
from edgeprune.surgery import surgery
from edgeprune.surgery.parts import TraceError, record_part_inputs
from edgeprune.surgery.replay import build_graph
from edgeprune.surgery.synthetic import kill_random_channels, randomize_bn
from edgeprune.threshold.neurons import traceable_neuron_groups

pytestmark = pytest.mark.usefixtures("one_thread")
SHAPE = (3, 32, 32)


@pytest.fixture(scope="module")
def shufflenet():
    """ShuffleNetV2 x0.5 with half of every branch's inner channels dead (30 % of them constant)."""
    torch.manual_seed(0)
    m = create_model("torchvision:shufflenet_v2_x0_5", num_classes=10).eval()
    randomize_bn(m, seed=0)
    with pytest.raises(TraceError, match="could not trace"):
        build_graph(m, SHAPE)
    inputs, _ = record_part_inputs(m, [torch.zeros(1, *SHAPE)])
    for n, mod in m.named_modules():
        if n.endswith("branch2"):
            kill_random_channels(mod, tuple(inputs[n][0].shape[1:]), 0.5, 0.3, seed=1)
    return m


def _expected_inner_removed(model) -> int:
    """Dead inner channels of every branch2 (its first 1×1 conv's rows all zero), counted from the weights alone:
    those are the only channels whose removal leaves every block's interface unchanged."""
    total = 0
    for n, mod in model.named_modules():
        if n.endswith("branch2"):
            w = mod[0].weight.detach().flatten(1)
            total += int((w.abs().sum(1) == 0).sum())
    return total


def test_shufflenet_partial_surgery_is_exact_and_reloads(shufflenet, tmp_path):
    before = {k: v.clone() for k, v in shufflenet.state_dict().items()}
    real = torch.randn(6, *SHAPE)
    res = surgery(shufflenet, SHAPE, probe_batch=real)
    r = res.report
    assert r["partial"]["reason"].startswith("torch-pruning could not trace")
    assert {u["module"] for u in r["partial"]["split"]} == {"stage2", "stage3", "stage4"}
    assert len(r["partial"]["parts_cut"]) == 16 and all(p.startswith("stage") for p in r["partial"]["parts_cut"])
    assert r["channels_removed"] == _expected_inner_removed(shufflenet) > 0
    assert r["params_after"] < r["params_before"] and r["verification"]["relative_diff"] <= 1e-5
    assert all(torch.equal(v, shufflenet.state_dict()[k]) for k, v in before.items())  # input untouched
    x = torch.randn(4, *SHAPE)
    with torch.no_grad():
        ref, out = shufflenet(x), res.model(x)
    assert torch.allclose(ref, out, atol=1e-5 * float(ref.abs().max()))
    spec = res.model.edgeprune_arch["surgery"]
    assert spec["version"] == 3 and spec["steps"] == [] and len(spec["parts"]) == 16
    save_checkpoint(tmp_path / "slim.pt", res.model, meta={"input_shape": list(SHAPE)})
    raw = torch.load(tmp_path / "slim.pt", weights_only=True)
    assert raw["arch"]["surgery"]["parts"][0]["scope"] == "stage2.0"
    back = load_checkpoint(tmp_path / "slim.pt").model.eval()
    with torch.no_grad():
        assert torch.equal(back(x), out)


def test_neuron_groups_inside_traceable_parts(shufflenet):
    groups = traceable_neuron_groups(shufflenet, SHAPE)
    modules = dict(shufflenet.named_modules())
    params = dict(shufflenet.named_parameters())
    assert groups and all(g.root.startswith(("stage", "conv")) for g in groups)
    for g in groups:
        assert g.root in modules and all(n in modules for n, *_ in g.members)
        assert all(p in params for p, *_ in g.params)
    # One group per block: its branch2's inner channels (first 1×1 conv → BN → depthwise → BN). Block outputs are
    # the parts' interfaces, and branch1's depthwise conv reads the block input: neither is a group.
    blocks = [n for n in modules if n.endswith("branch2")]
    assert len(groups) == len(blocks)
    for g in groups:
        block = g.root.rsplit(".", 1)[0]
        assert block in blocks and {f"{block}.0", f"{block}.3"} <= {n for n, *_ in g.members}


def test_traceable_model_unchanged_path():
    m = create_model("tiny-cnn").eval()
    res = surgery(m, (1, 8, 8))
    assert "partial" not in res.report
    assert [g.root for g in traceable_neuron_groups(m, (1, 8, 8))]


def test_misread_reshape_falls_back_to_parts_and_stays_exact():
    """torch-pruning traces this channel shuffle but misreads its indices: the model is cut by parts instead of
    failing, the shuffle's channels (its part's output) stay, and the layers before it are still cut."""

    class Shuffle(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 1)

        def forward(self, x):
            y = self.conv(x)
            n, c, h, w = y.shape
            return y.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Sequential(nn.Conv2d(1, 6, 3), nn.ReLU(), nn.Conv2d(6, 4, 1)), Shuffle(), nn.ReLU(), nn.Flatten(),
        nn.Linear(4 * 3 * 3, 3)).eval()
    with torch.no_grad():
        model[0][0].weight[[1, 4]] = 0
        model[0][0].bias[[1, 4]] = 0
    res = surgery(model, (1, 5, 5))
    part = res.report["partial"]
    assert "inconsistent channel indices" in part["reason"] and part["parts_cut"] == ["0"]
    assert res.model[0][0].out_channels == 4 and res.model[1].conv.out_channels == 4
    x = torch.randn(5, 1, 5, 5)
    with torch.no_grad():
        assert torch.allclose(res.model(x), model(x), atol=1e-6)
