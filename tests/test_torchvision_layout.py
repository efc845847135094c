"""The promise "a checkpoint saved from torchvision's googlenet loads unchanged", checked on every machine against
the key names and shapes torchvision itself produced (tests/fixtures/torchvision_googlenet_state_dict.json, written by
tests/fixtures/make_torchvision_state_dict.py with torchvision 0.29.1). test_reference.py compares the maths too,
where torchvision is installed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from edge_inception.model.checkpoints import load_model
from edge_inception.model.googlenet import GoogLeNet

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "torchvision_googlenet_state_dict.json").read_text())
TORCHVISION = {k: tuple(v) for k, v in FIXTURE["state_dict"].items()}


def test_our_torchvision_layout_has_torchvisions_names_and_shapes():
    ours = {k: tuple(v.shape) for k, v in GoogLeNet("torchvision", 1000, aux_logits=True).state_dict().items()}
    assert list(ours) == list(TORCHVISION)  # the same names, in the same order
    assert ours == TORCHVISION


@pytest.mark.parametrize("aux", [True, False])
def test_a_checkpoint_with_torchvisions_keys_loads_every_tensor(tmp_path, aux):
    gen = torch.Generator().manual_seed(0)
    state = {}
    for name, shape in TORCHVISION.items():
        if not aux and name.startswith(("aux1.", "aux2.")):
            continue
        state[name] = torch.zeros((), dtype=torch.long) if name.endswith("num_batches_tracked") else torch.randn(shape, generator=gen)
        if name.endswith("running_var"):
            state[name] = state[name].abs() + 0.5
    torch.save(state, tmp_path / "googlenet.pth")
    loaded = load_model(tmp_path / "googlenet.pth")
    assert loaded.variant.value == "torchvision" and loaded.num_classes == 1000 and loaded.transform_input
    got = loaded.model.state_dict()
    for name, tensor in got.items():
        assert torch.equal(tensor, state[name]), name
    assert set(state) - set(got) == ({k for k in state if k.startswith(("aux1.", "aux2."))})  # aux heads: accepted, dropped
