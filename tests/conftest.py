from __future__ import annotations

import pytest
import torch

from edge_inception.model import GoogLeNet, init_weights


@pytest.fixture(autouse=True)
def _few_threads():
    torch.set_num_threads(2)


def seeded_state_dict(variant: str = "torchvision", num_classes: int = 1000, aux: bool = True, seed: int = 1) -> dict:
    return init_weights(GoogLeNet(variant, num_classes, aux_logits=aux), seed).state_dict()
