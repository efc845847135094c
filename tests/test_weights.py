import hashlib

import pytest
import torch
from safetensors.torch import save_file

from edge_inception.errors import CheckpointError
from edge_inception.model.checkpoints import load_model
from edge_inception.vocab import Variant

from .conftest import seeded_state_dict


def _logits(model, seed=0):
    torch.manual_seed(seed)
    with torch.no_grad():
        return model.eval()(torch.randn(2, 3, 96, 96))


@pytest.mark.parametrize("variant", list(Variant))
def test_state_dict_with_aux_keys_loads_strictly_and_drops_aux(tmp_path, variant):
    sd = seeded_state_dict(variant, num_classes=12)
    assert any(k.startswith("aux1.") for k in sd)
    path = tmp_path / "ckpt.pth"
    torch.save(sd, path)
    loaded = load_model(path)
    assert loaded.variant is Variant(variant) and loaded.num_classes == 12 and not loaded.seeded
    assert loaded.model.aux1 is None
    for key, value in loaded.model.state_dict().items():
        assert torch.equal(value, sd[key]), key
    assert loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("layout", ["state_dict+module", "model", "model_state_dict", "safetensors", "orig_mod"])
def test_every_checkpoint_layout_loads_the_saved_tensors(tmp_path, layout):
    """Each layout the README promises gives back exactly the tensors that were saved (aux heads dropped)."""
    sd = seeded_state_dict("torchvision", num_classes=3, seed=7)
    path = tmp_path / ("w.safetensors" if layout == "safetensors" else "w.pt")
    if layout == "state_dict+module":
        torch.save({"epoch": 4, "state_dict": {f"module.{k}": v for k, v in sd.items()}}, path)
    elif layout == "orig_mod":  # torch.compile'd models save under _orig_mod.
        torch.save({f"_orig_mod.{k}": v for k, v in sd.items()}, path)
    elif layout == "safetensors":
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        torch.save({layout: sd, "optimizer": {}}, path)
    loaded = load_model(path).model.state_dict()
    assert set(loaded) == {k for k in sd if not k.startswith(("aux1.", "aux2."))}
    for key, value in loaded.items():
        assert torch.equal(value, sd[key]), key
    assert load_model(path).sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_imagenet_torchvision_checkpoint_gets_transform_input(tmp_path):
    torch.save(seeded_state_dict("torchvision"), tmp_path / "tv.pth")
    assert load_model(tmp_path / "tv.pth").transform_input is True
    assert load_model(tmp_path / "tv.pth", transform_input=False).transform_input is False


def test_wrong_keys_shapes_and_files(tmp_path):
    sd = seeded_state_dict("torchvision", aux=False)
    broken = dict(sd)
    del broken["inception4b.branch2.1.bn.weight"]
    torch.save(broken, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match="missing key 'inception4b.branch2.1.bn.weight'"):
        load_model(tmp_path / "missing.pth")

    extra = dict(sd, **{"inception9z.weight": torch.zeros(1)})
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match="unexpected key 'inception9z.weight'"):
        load_model(tmp_path / "extra.pth")

    wrong = dict(sd)
    wrong["inception3a.branch1.conv.weight"] = torch.zeros(64, 192, 3, 3)
    torch.save(wrong, tmp_path / "shape.pth")
    with pytest.raises(CheckpointError, match=r"'inception3a.branch1.conv.weight' has shape \(64, 192, 3, 3\), expected \(64, 192, 1, 1\)"):
        load_model(tmp_path / "shape.pth")

    torch.save({"layer1.weight": torch.zeros(3)}, tmp_path / "resnet.pth")
    with pytest.raises(CheckpointError, match="not a GoogLeNet checkpoint"):
        load_model(tmp_path / "resnet.pth")

    good = tmp_path / "good.pth"
    torch.save(sd, good)
    (tmp_path / "trunc.pth").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="trunc.pth"):
        load_model(tmp_path / "trunc.pth")

    (tmp_path / "text.pth").write_text("hello")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        load_model(tmp_path / "text.pth")

    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "nope.pth")


class Evil:
    """Any non-tensor class: weights_only=True must refuse to reconstruct it."""


def test_pickled_objects_are_refused(tmp_path):
    torch.save({"state_dict": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="refusing to unpickle"):
        load_model(tmp_path / "evil.pth")


def test_variant_and_classes_must_agree(tmp_path):
    torch.save(seeded_state_dict("paper", num_classes=4), tmp_path / "p.pth")
    with pytest.raises(CheckpointError, match="paper layout"):
        load_model(tmp_path / "p.pth", variant="torchvision")
    with pytest.raises(CheckpointError, match="4 classes"):
        load_model(tmp_path / "p.pth", num_classes=10)


def test_seeded_model_is_flagged():
    loaded = load_model(None, variant="paper", num_classes=10, seed=5)
    assert loaded.seeded and loaded.source == "seed:5" and loaded.sha256 is None
    assert loaded.class_names[:2] == ["class_0", "class_1"]
    assert load_model(None).class_names[281] == "tabby"
