"""The model zoo: every registered model builds, runs forward with its default input and has the papers' size."""

from __future__ import annotations

import pytest
import torch

from edgeprune.errors import ModelError
from edgeprune.models import create_model, get_entry, input_shape_of, list_models

# Parameter counts from the papers (LeNet-300 266,610; LeNet-5 431,080) and from the architectures' definitions.
EXPECTED_PARAMS = {
    "lenet300": 266_610,
    "lenet5": 431_080,
    "resnet20-cifar": 272_474,  # 0.27 M + 2,752 for the two 1x1 projection shortcuts
    "resnet32-cifar": 466_906,  # 0.46 M + 2,752 for the two 1x1 projection shortcuts
    "vgg16-cifar": 14_728_266,
    "vgg16-cifar-fc2": 14_990_922,
    "alexnet-cifar": 23_640_996,
    "unet-small": 482_754,
}


def _count(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("name", list_models(include_test=True))
def test_forward_shape(name):
    model = create_model(name).eval()
    entry = get_entry(name)
    x = torch.randn(2, *input_shape_of(name))
    with torch.no_grad():
        y = model(x)
    if entry.task == "segmentation":
        assert y.shape == (2, entry.num_classes, *x.shape[2:])
    else:
        assert y.shape == (2, entry.num_classes)
    assert model.edgeprune_arch == {"name": name, "kwargs": {}}


@pytest.mark.parametrize("name,count", sorted(EXPECTED_PARAMS.items()))
def test_parameter_counts(name, count):
    assert _count(create_model(name)) == count


def test_every_user_model_has_a_count():
    assert set(list_models()) == set(EXPECTED_PARAMS)


def test_lenet5_layer_widths():
    convs = [m for m in create_model("lenet5").modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert [getattr(m, "out_channels", getattr(m, "out_features", None)) for m in convs] == [20, 50, 500, 10]


def test_resnet32_has_15_blocks():
    from edgeprune.models.resnet_cifar import BasicBlock

    assert sum(isinstance(m, BasicBlock) for m in create_model("resnet32-cifar").modules()) == 15


def test_resnet20_blocks_and_width():
    from edgeprune.models.resnet_cifar import BasicBlock

    model = create_model("resnet20-cifar", in_channels=1, width=8)
    assert sum(isinstance(m, BasicBlock) for m in model.modules()) == 9
    convs = [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert (min(convs), max(convs)) == (8, 32)
    assert model(torch.randn(1, 1, 28, 28)).shape == (1, 10)
    with pytest.raises(ModelError, match="width"):
        create_model("resnet20-cifar", width=0)


def test_num_classes_honoured():
    assert create_model("lenet5", num_classes=7)(torch.randn(1, 1, 28, 28)).shape == (1, 7)
    assert create_model("alexnet-cifar", num_classes=10)(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_torchvision_models():
    m = create_model("torchvision:resnet18", num_classes=5).eval()
    assert m(torch.randn(1, 3, 64, 64)).shape == (1, 5)
    assert m.edgeprune_arch == {"name": "torchvision:resnet18", "kwargs": {"num_classes": 5}}
    assert input_shape_of("torchvision:mobilenet_v2") == (3, 224, 224)


def test_unknown_names_are_clear():
    with pytest.raises(ModelError, match="unknown architecture 'lenet6'.*lenet5"):
        create_model("lenet6")
    with pytest.raises(ModelError, match="unknown torchvision classification model 'resnet19'"):
        create_model("torchvision:resnet19")
    with pytest.raises(ModelError, match="cannot build 'lenet5'"):
        create_model("lenet5", depth=3)


def test_test_models_hidden_from_listing():
    assert "tiny-mlp" not in list_models()
    assert "tiny-mlp" in list_models(include_test=True)
