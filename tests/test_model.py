import pytest
import torch

from edge_inception.model.googlenet import (
    AUX_LOSS_WEIGHT,
    INCEPTION_CONFIG,
    GoogLeNet,
    GoogLeNetOutputs,
    count_parameters,
    googlenet_loss,
    init_weights,
)
from edge_inception.vocab import MIN_IMAGE_SIZE, Variant


def paper_parameter_count() -> int:
    """Parameters of the paper net computed from Table 1's layer shapes (with biases), independently of the model."""

    def conv(cin: int, cout: int, k: int) -> int:
        return cin * cout * k * k + cout

    total = conv(3, 64, 7) + conv(64, 64, 1) + conv(64, 192, 3)
    for cin, c1, r3, c3, r5, c5, pp in INCEPTION_CONFIG.values():
        total += conv(cin, c1, 1) + conv(cin, r3, 1) + conv(r3, c3, 3) + conv(cin, r5, 1) + conv(r5, c5, 5) + conv(cin, pp, 1)
    return total + 1024 * 1000 + 1000


@pytest.mark.parametrize("variant", list(Variant))
def test_eval_returns_one_logits_tensor(variant):
    model = init_weights(GoogLeNet(variant, num_classes=7)).eval()
    out = model(torch.randn(2, 3, 224, 224))
    assert isinstance(out, torch.Tensor)
    assert out.shape == (2, 7)


@pytest.mark.parametrize("variant", list(Variant))
def test_train_mode_adds_two_aux_heads_and_loss_weights_them(variant):
    torch.manual_seed(0)
    model = init_weights(GoogLeNet(variant, num_classes=5)).train()
    out = model(torch.randn(2, 3, 224, 224))
    assert isinstance(out, GoogLeNetOutputs)
    assert [t.shape for t in out] == [(2, 5)] * 3
    target = torch.tensor([1, 3])
    ce = torch.nn.functional.cross_entropy
    expected = ce(out.logits, target) + 0.3 * (ce(out.aux_logits1, target) + ce(out.aux_logits2, target))
    assert AUX_LOSS_WEIGHT == 0.3
    assert torch.allclose(googlenet_loss(out, target), expected)
    # eval-mode logits alone give the plain cross-entropy
    assert torch.allclose(googlenet_loss(out.logits, target), ce(out.logits, target))


def test_parameter_counts():
    assert count_parameters(GoogLeNet("torchvision")) == 6_624_904  # torchvision's published figure
    assert count_parameters(GoogLeNet("paper")) == paper_parameter_count()
    assert 6.9e6 < paper_parameter_count() < 7.1e6


def test_torchvision_key_names_and_shapes():
    sd = GoogLeNet("torchvision").state_dict()
    expected = {
        "conv1.conv.weight": (64, 3, 7, 7),
        "conv1.bn.running_var": (64,),
        "conv3.conv.weight": (192, 64, 3, 3),
        "inception3a.branch3.1.conv.weight": (32, 16, 3, 3),  # torchvision's 3x3 "5x5" branch
        "inception4e.branch4.1.bn.num_batches_tracked": (),
        "aux1.conv.conv.weight": (128, 512, 1, 1),
        "aux1.fc1.weight": (1024, 2048),
        "aux2.fc2.weight": (1000, 1024),
        "fc.weight": (1000, 1024),
    }
    for key, shape in expected.items():
        assert tuple(sd[key].shape) == shape, key
    assert not any(".bias" in k and k.startswith("conv1.conv") for k in sd)


def test_paper_variant_has_5x5_lrn_and_no_batchnorm():
    model = GoogLeNet("paper")
    sd = model.state_dict()
    assert tuple(sd["inception3a.branch3.1.conv.weight"].shape) == (32, 16, 5, 5)
    assert "conv1.conv.bias" in sd
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert sum(isinstance(m, torch.nn.LocalResponseNorm) for m in model.modules()) == 2
    assert model.dropout.p == 0.4 and GoogLeNet("torchvision").dropout.p == 0.2


@pytest.mark.parametrize("variant", list(Variant))
def test_minimum_image_size(variant):
    model = GoogLeNet(variant, aux_logits=False).eval()
    assert model(torch.randn(1, 3, MIN_IMAGE_SIZE, MIN_IMAGE_SIZE)).shape == (1, 1000)


def test_seeded_init_is_reproducible_and_seed_dependent():
    a = init_weights(GoogLeNet("torchvision", 10), seed=3).state_dict()
    b = init_weights(GoogLeNet("torchvision", 10), seed=3).state_dict()
    c = init_weights(GoogLeNet("torchvision", 10), seed=4).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["conv1.conv.weight"], c["conv1.conv.weight"])


def test_transform_input_matches_torchvision_formula():
    model = init_weights(GoogLeNet("torchvision", 10, transform_input=True, aux_logits=False)).eval()
    x = torch.randn(2, 3, 64, 64)
    ch = [x[:, i : i + 1] * (s / 0.5) + (m - 0.5) / 0.5 for i, (m, s) in enumerate(zip((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))]
    assert torch.allclose(model._transform_input(x), torch.cat(ch, 1), atol=1e-6)
