"""GoogLeNet (Inception v1), Szegedy et al., "Going deeper with convolutions", CVPR 2015.

Two variants share one module tree:

* ``torchvision``: the layout and maths of torchvision's ``googlenet`` (bias-free convolutions followed by
  BatchNorm with eps 1e-3, a 3x3 kernel in the "5x5" branch, a 2x2 ``maxpool4``, dropout 0.2 and the
  ``transform_input`` re-mapping its ported ImageNet weights expect). Parameter names match torchvision's
  ``state_dict`` exactly, so its checkpoints load unchanged.
* ``paper``: the network of the paper's Table 1 (convolutions with biases and no BatchNorm, 5x5 kernels,
  local response normalisation after the first max-pool and after the second convolution stage, a 3x3/2
  max-pool before stage 5, dropout 0.4).

Both carry the two auxiliary classifiers on top of (4a) and (4d). They run only in training mode; in eval
mode (and therefore in every export) the forward pass returns one logits tensor.

The module does no I/O: loading checkpoints lives in :mod:`edge_inception.model.checkpoints`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..vocab import IMAGENET_MEAN, IMAGENET_STD, Variant

AUX_LOSS_WEIGHT = 0.3  # the paper adds each auxiliary loss with weight 0.3

@dataclass(frozen=True)
class VariantSpec:
    """What differs between the two variants."""

    batch_norm: bool  # BatchNorm (eps 1e-3) after bias-free convs, instead of biased convs
    branch3_kernel: int  # kernel of the "5x5" branch: 3 in torchvision (pytorch/vision#906), 5 in the paper
    lrn: bool  # local response normalisation after maxpool1 and conv3
    maxpool4_kernel: int  # torchvision pools 2x2/2 before stage 5, the paper 3x3/2
    dropout: float


SPECS = {
    Variant.torchvision: VariantSpec(batch_norm=True, branch3_kernel=3, lrn=False, maxpool4_kernel=2, dropout=0.2),
    Variant.paper: VariantSpec(batch_norm=False, branch3_kernel=5, lrn=True, maxpool4_kernel=3, dropout=0.4),
}

# Inception modules of Table 1: in, #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj
INCEPTION_CONFIG: dict[str, tuple[int, int, int, int, int, int, int]] = {
    "inception3a": (192, 64, 96, 128, 16, 32, 32),
    "inception3b": (256, 128, 128, 192, 32, 96, 64),
    "inception4a": (480, 192, 96, 208, 16, 48, 64),
    "inception4b": (512, 160, 112, 224, 24, 64, 64),
    "inception4c": (512, 128, 128, 256, 24, 64, 64),
    "inception4d": (512, 112, 144, 288, 32, 64, 64),
    "inception4e": (528, 256, 160, 320, 32, 128, 128),
    "inception5a": (832, 256, 160, 320, 32, 128, 128),
    "inception5b": (832, 384, 192, 384, 48, 128, 128),
}


class GoogLeNetOutputs(NamedTuple):
    """Training-mode outputs; the field order is torchvision's."""

    logits: Tensor
    aux_logits2: Tensor
    aux_logits1: Tensor


class _LRNFunction(torch.autograd.Function):
    """PyTorch's LRN maths, exported as ONNX's single ``LRN`` op (the legacy exporter would otherwise expand
    ``F.local_response_norm`` into a Pad/AvgPool/If subgraph that TensorRT and the FLOP counter handle badly)."""

    @staticmethod
    def forward(ctx, x: Tensor, size: int, alpha: float, beta: float, k: float) -> Tensor:  # type: ignore[override]
        return F.local_response_norm(x, size, alpha, beta, k)

    @staticmethod
    def symbolic(g, x, size: int, alpha: float, beta: float, k: float):  # type: ignore[no-untyped-def]
        return g.op("LRN", x, size_i=size, alpha_f=alpha, beta_f=beta, bias_f=k)


class LocalResponseNorm(nn.LocalResponseNorm):
    """Across-channel LRN, as in the paper (section 5: after the first max-pool and the second conv)."""

    def forward(self, x: Tensor) -> Tensor:
        if torch.onnx.is_in_onnx_export():
            out: Tensor = _LRNFunction.apply(x, self.size, self.alpha, self.beta, self.k)
            return out
        return super().forward(x)


class BasicConv2d(nn.Module):
    """Conv + ReLU; with ``batch_norm`` the conv has no bias and a BatchNorm (eps 1e-3) sits between."""

    def __init__(self, in_channels: int, out_channels: int, *, batch_norm: bool, **kwargs: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=not batch_norm, **kwargs)  # type: ignore[arg-type]
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001) if batch_norm else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x, inplace=True)


class Inception(nn.Module):
    """Four parallel branches concatenated on channels; 1x1 reductions before the 3x3 and 5x5 convs and
    after the 3x3 max-pool keep the cost in check (section 4 of the paper)."""

    def __init__(
        self,
        in_channels: int,
        ch1x1: int,
        ch3x3red: int,
        ch3x3: int,
        ch5x5red: int,
        ch5x5: int,
        pool_proj: int,
        *,
        spec: VariantSpec,
    ) -> None:
        super().__init__()
        bn = spec.batch_norm
        k = spec.branch3_kernel
        self.branch1 = BasicConv2d(in_channels, ch1x1, kernel_size=1, batch_norm=bn)
        self.branch2 = nn.Sequential(
            BasicConv2d(in_channels, ch3x3red, kernel_size=1, batch_norm=bn),
            BasicConv2d(ch3x3red, ch3x3, kernel_size=3, padding=1, batch_norm=bn),
        )
        self.branch3 = nn.Sequential(
            BasicConv2d(in_channels, ch5x5red, kernel_size=1, batch_norm=bn),
            # The "5x5" branch: torchvision uses a 3x3 kernel here, a known deviation from the paper
            # that its ported weights depend on (pytorch/vision#906).
            BasicConv2d(ch5x5red, ch5x5, kernel_size=k, padding=k // 2, batch_norm=bn),
        )
        self.branch4 = nn.Sequential(
            nn.MaxPool2d(kernel_size=3, stride=1, padding=1, ceil_mode=True),
            BasicConv2d(in_channels, pool_proj, kernel_size=1, batch_norm=bn),
        )

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class InceptionAux(nn.Module):
    """Auxiliary classifier on top of (4a) / (4d), used only while training."""

    def __init__(self, in_channels: int, num_classes: int, *, spec: VariantSpec) -> None:
        super().__init__()
        self.conv = BasicConv2d(in_channels, 128, kernel_size=1, batch_norm=spec.batch_norm)
        self.fc1 = nn.Linear(2048, 1024)
        self.fc2 = nn.Linear(1024, num_classes)
        self.paper_pool = not spec.batch_norm

    def forward(self, x: Tensor) -> Tensor:
        # aux1: N x 512 x 14 x 14, aux2: N x 528 x 14 x 14
        if self.paper_pool and x.shape[-2:] == (14, 14):
            x = F.avg_pool2d(x, kernel_size=5, stride=3)  # the paper's 5x5/3 average pool
        else:
            # torchvision pools adaptively; the paper variant does too at other input sizes so the
            # 2048-wide fc1 still fits (fine-tuning at small image sizes).
            x = F.adaptive_avg_pool2d(x, (4, 4))
        # N x 512 x 4 x 4 (aux2: 528)
        x = self.conv(x)
        # N x 128 x 4 x 4
        x = torch.flatten(x, 1)
        # N x 2048
        x = F.relu(self.fc1(x), inplace=True)
        # N x 1024
        x = F.dropout(x, 0.7, training=self.training)
        return self.fc2(x)
        # N x num_classes


class GoogLeNet(nn.Module):
    def __init__(
        self,
        variant: Variant | str = Variant.torchvision,
        num_classes: int = 1000,
        *,
        transform_input: bool = False,
        aux_logits: bool = True,
    ) -> None:
        super().__init__()
        self.variant = Variant(variant)
        self.num_classes = num_classes
        self.transform_input = transform_input
        spec = SPECS[self.variant]
        bn = spec.batch_norm

        self.conv1 = BasicConv2d(3, 64, kernel_size=7, stride=2, padding=3, batch_norm=bn)
        self.maxpool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        # The paper's LRN: size 5, alpha 1e-4, beta 0.75 (as in its Caffe reference model).
        self.lrn1 = LocalResponseNorm(5, alpha=1e-4, beta=0.75) if spec.lrn else None
        self.conv2 = BasicConv2d(64, 64, kernel_size=1, batch_norm=bn)
        self.conv3 = BasicConv2d(64, 192, kernel_size=3, padding=1, batch_norm=bn)
        self.lrn2 = LocalResponseNorm(5, alpha=1e-4, beta=0.75) if spec.lrn else None
        self.maxpool2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)

        self.inception3a = Inception(*INCEPTION_CONFIG["inception3a"], spec=spec)
        self.inception3b = Inception(*INCEPTION_CONFIG["inception3b"], spec=spec)
        self.maxpool3 = nn.MaxPool2d(3, stride=2, ceil_mode=True)

        self.inception4a = Inception(*INCEPTION_CONFIG["inception4a"], spec=spec)
        self.inception4b = Inception(*INCEPTION_CONFIG["inception4b"], spec=spec)
        self.inception4c = Inception(*INCEPTION_CONFIG["inception4c"], spec=spec)
        self.inception4d = Inception(*INCEPTION_CONFIG["inception4d"], spec=spec)
        self.inception4e = Inception(*INCEPTION_CONFIG["inception4e"], spec=spec)
        self.maxpool4 = nn.MaxPool2d(spec.maxpool4_kernel, stride=2, ceil_mode=True)

        self.inception5a = Inception(*INCEPTION_CONFIG["inception5a"], spec=spec)
        self.inception5b = Inception(*INCEPTION_CONFIG["inception5b"], spec=spec)

        self.aux1: InceptionAux | None = InceptionAux(512, num_classes, spec=spec) if aux_logits else None
        self.aux2: InceptionAux | None = InceptionAux(528, num_classes, spec=spec) if aux_logits else None

        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(spec.dropout)
        self.fc = nn.Linear(1024, num_classes)

    def _transform_input(self, x: Tensor) -> Tensor:
        # torchvision's ImageNet weights were ported from TensorFlow and expect inputs in [-1, 1]; this maps
        # an ImageNet mean/std normalised input there, so both variants share one preprocessing.
        if not self.transform_input:
            return x
        # torchvision writes this per channel with slices and a concat; one broadcast Mul + Add is the same
        # arithmetic and exports as two nodes.
        scale = torch.tensor([s / 0.5 for s in IMAGENET_STD], dtype=x.dtype).view(1, 3, 1, 1)
        shift = torch.tensor([(m - 0.5) / 0.5 for m in IMAGENET_MEAN], dtype=x.dtype).view(1, 3, 1, 1)
        return x * scale + shift

    def forward(self, x: Tensor) -> Tensor | GoogLeNetOutputs:
        x = self._transform_input(x)
        # N x 3 x 224 x 224
        x = self.conv1(x)
        # N x 64 x 112 x 112
        x = self.maxpool1(x)
        # N x 64 x 56 x 56
        if self.lrn1 is not None:
            x = self.lrn1(x)
        x = self.conv2(x)
        # N x 64 x 56 x 56
        x = self.conv3(x)
        # N x 192 x 56 x 56
        if self.lrn2 is not None:
            x = self.lrn2(x)
        x = self.maxpool2(x)
        # N x 192 x 28 x 28

        x = self.inception3a(x)
        # N x 256 x 28 x 28
        x = self.inception3b(x)
        # N x 480 x 28 x 28
        x = self.maxpool3(x)
        # N x 480 x 14 x 14

        x = self.inception4a(x)
        # N x 512 x 14 x 14
        aux1 = self.aux1(x) if self.training and self.aux1 is not None else None
        x = self.inception4b(x)
        # N x 512 x 14 x 14
        x = self.inception4c(x)
        # N x 512 x 14 x 14
        x = self.inception4d(x)
        # N x 528 x 14 x 14
        aux2 = self.aux2(x) if self.training and self.aux2 is not None else None
        x = self.inception4e(x)
        # N x 832 x 14 x 14
        x = self.maxpool4(x)
        # N x 832 x 7 x 7

        x = self.inception5a(x)
        # N x 832 x 7 x 7
        x = self.inception5b(x)
        # N x 1024 x 7 x 7

        x = self.avgpool(x)
        # N x 1024 x 1 x 1
        x = torch.flatten(x, 1)
        # N x 1024
        x = self.dropout(x)
        x = self.fc(x)
        # N x num_classes
        if aux1 is not None and aux2 is not None:
            return GoogLeNetOutputs(x, aux2, aux1)
        return x


def googlenet_loss(
    outputs: Tensor | GoogLeNetOutputs, target: Tensor, aux_weight: float = AUX_LOSS_WEIGHT
) -> Tensor:
    """Cross-entropy of the main head plus ``aux_weight`` times each auxiliary head's (eval: main only)."""
    if isinstance(outputs, GoogLeNetOutputs):
        main = F.cross_entropy(outputs.logits, target)
        aux = F.cross_entropy(outputs.aux_logits1, target) + F.cross_entropy(outputs.aux_logits2, target)
        return main + aux_weight * aux
    return F.cross_entropy(outputs, target)


def init_weights(model: GoogLeNet, seed: int = 0) -> GoogLeNet:
    """Reproducible He (fan-in) initialisation from ``seed``, for both variants.

    torchvision draws weights with std 0.01; with BatchNorm's running statistics still at their defaults
    (mean 0, var 1) that shrinks the activations by about 4x per layer, to logits of ~1e-18 at the end,
    which makes every numeric check on a seeded model meaningless. He initialisation keeps them O(1).
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.fill_(1.0)
                m.bias.zero_()
    return model


def count_parameters(model: nn.Module, *, include_aux: bool = False) -> int:
    return sum(
        p.numel() for name, p in model.named_parameters() if include_aux or not name.startswith(("aux1.", "aux2."))
    )
