"""Our GoogLeNet against torchvision's own ``googlenet``, where torchvision is installed.

torchvision is not a dependency (its PyPI build pulls a multi-GB CUDA torch on this project's CPU machines), so
these tests skip there and run wherever torchvision is importable (the GPU machine's image ships it). They load
a checkpoint written by torchvision itself, the file a user already has, and compare the maths.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edge_inception.data.images import bundled_photos, load_batch
from edge_inception.model.checkpoints import load_model

torchvision = pytest.importorskip("torchvision", reason="torchvision is not installed: nothing to compare our GoogLeNet with")


def _photos(size: int = 224) -> torch.Tensor:
    return torch.from_numpy(load_batch(bundled_photos()[:4], size))


def _torchvision_checkpoint(path: Path, *, aux: bool, transform_input: bool, num_classes: int = 1000) -> nn.Module:
    torch.manual_seed(0)
    reference = torchvision.models.googlenet(weights=None, aux_logits=aux, init_weights=True, transform_input=transform_input,
                                             num_classes=num_classes)
    # init_weights leaves BatchNorm at mean 0 / var 1; give it statistics so eval-mode folding is exercised.
    for m in reference.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    torch.save(reference.state_dict(), path)
    return reference


def test_torchvision_checkpoint_gives_torchvision_logits(tmp_path):
    reference = _torchvision_checkpoint(tmp_path / "googlenet.pth", aux=True, transform_input=True).eval()
    # 1000 classes in torchvision's layout: the loader switches transform_input on, as torchvision does for
    # its ImageNet weights.
    ours = load_model(tmp_path / "googlenet.pth")
    assert ours.variant.value == "torchvision" and ours.transform_input
    x = _photos()
    with torch.inference_mode():
        torch.testing.assert_close(ours.model.eval()(x), reference(x), rtol=1e-4, atol=1e-4)


def test_training_outputs_and_aux_heads_match(tmp_path):
    reference = _torchvision_checkpoint(tmp_path / "tv10.pth", aux=True, transform_input=False, num_classes=10).train()
    ours = load_model(tmp_path / "tv10.pth", aux_logits=True).model.train()
    heads: dict[str, torch.Tensor] = {}
    # read torchvision's heads by hook, so the comparison does not rest on how its forward names its outputs
    for name in ("aux1", "aux2"):
        getattr(reference, name).register_forward_hook(lambda _m, _i, out, name=name: heads.__setitem__(name, out))
    x = _photos(160)
    # same seed, same order of dropout draws (aux1, aux2, then the final dropout) in both models
    torch.manual_seed(1)
    got = ours(x)
    torch.manual_seed(1)
    want = reference(x)
    torch.testing.assert_close(got.logits, want.logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got.aux_logits1, heads["aux1"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got.aux_logits2, heads["aux2"], rtol=1e-4, atol=1e-4)
    # the batch statistics moved the same way in both
    torch.testing.assert_close(ours.conv1.bn.running_mean, reference.conv1.bn.running_mean)


def test_export_of_a_torchvision_checkpoint_matches_torchvision(tmp_path):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    from edge_inception.convert.export import export_model

    reference = _torchvision_checkpoint(tmp_path / "googlenet.pth", aux=True, transform_input=True).eval()
    export_model(tmp_path / "googlenet.pth", tmp_path / "googlenet.onnx", simplify=False)
    x = _photos()
    session = ort.InferenceSession(str(tmp_path / "googlenet.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.inference_mode():
        want = reference(x).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)
    assert (got.argmax(1) == want.argmax(1)).all()
