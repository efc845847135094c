from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from edge_inception.model.googlenet import GoogLeNet, init_weights

TRAIN_IMAGE_SIZE = 64
TRAIN_STEPS = 200


@pytest.fixture(autouse=True)
def _few_threads():
    torch.set_num_threads(2)


def seeded_state_dict(variant: str = "torchvision", num_classes: int = 1000, aux: bool = True, seed: int = 1) -> dict:
    return init_weights(GoogLeNet(variant, num_classes, aux_logits=aux), seed).state_dict()


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> Path:
    from edge_inception.data.demo_data import make_demo_dataset

    return make_demo_dataset(tmp_path_factory.mktemp("demo"))


@dataclass
class Trained:
    checkpoint: Path
    onnx: Path
    data: Path
    result: object


@pytest.fixture(scope="session")
def trained(demo_data, tmp_path_factory) -> Trained:
    """A GoogLeNet briefly trained on the demo crops (once per session), and its verified ONNX export.

    A randomly initialised net gives every image the same class, so fidelity checks need this one.
    """
    from edge_inception.convert.export import export_model
    from edge_inception.model.train import TrainConfig, train

    out = tmp_path_factory.mktemp("trained")
    torch.set_num_threads(2)
    result = train(TrainConfig(data=demo_data / "train", val=demo_data / "val", output=out / "demo.pth", max_steps=TRAIN_STEPS,
                               batch_size=16, image_size=TRAIN_IMAGE_SIZE, lr=0.03))
    assert result.checkpoint is not None
    exported = export_model(result.checkpoint, out / "demo.onnx")
    return Trained(result.checkpoint, exported.path, demo_data, result)


@pytest.fixture(scope="session")
def built_fp32(trained, tmp_path_factory) -> Path:
    """The trained net built for the CPU target (ONNX Runtime)."""
    from edge_inception.engines.build import build

    return build(trained.onnx, "cpu", output_dir=tmp_path_factory.mktemp("built_fp32")).artifact
