"""benchmarks/int8_peers.py's mechanism on a tiny run (the trained demo net at 64 px, three calibration photos, a few
held-out crops): every quantizer calibrates on the same crops and is judged on photos none of them saw, with the CPU's
ISA flags recorded; every model's latency is taken by bench's machinery (one process per model and round, the rounds'
load recorded), never in the process that quantized. The figures themselves are the benchmark's, not this test's."""

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_inception.data.images import bundled_photos
from edge_inception.evaluate.cpu import cpu_info
from edge_inception.evaluate.verdict import wilson_lower_bound

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def test_peers_are_judged_on_the_same_unseen_photos(trained, tmp_path):
    pytest.importorskip("nncf")
    import int8_peers

    calib = tmp_path / "three"
    calib.mkdir()
    for p in bundled_photos()[:3]:
        shutil.copyfile(p, calib / p.name)
    doc = int8_peers.run(trained.onnx, calib, held_crops=12, calib_samples=6, iterations=2, rounds=1,
                         ours={"calib_method": "minmax", "min_agreement": 0.5, "calib_size": 12})
    assert doc["calibration_photos"] == sorted(p.name for p in bundled_photos()[:3])
    assert not set(doc["held_photos"]) & set(doc["calibration_photos"]) and len(doc["held_photos"]) == len(bundled_photos()) - 3
    assert doc["isa"] == cpu_info().simd and doc["vnni"] == cpu_info().vnni and doc["held_crops"] == 12
    names = [r["quantizer"] for r in doc["rows"]]
    assert names[0].startswith("fp32") and names[1].startswith("ours") and "quantize_static" in names[2] and "NNCF" in names[3]
    assert doc["rows"][0]["agreement"] == 1.0  # FP32 against itself: the comparison is wired to the same reference
    counted = [r for r in doc["rounds"] if r["counted"]]
    assert len(counted) == 1 and all("loadavg_before" in r and "disturbed" in r for r in doc["rounds"])
    assert doc["disturbed"] == counted[0]["disturbed"] and doc["calibration_crops"] == 6
    for r in doc["rows"]:
        assert "error" not in r, r
        assert 0.0 <= r["agreement"] <= 1.0 and -1.0 <= r["mean_cosine"] <= 1.0 + 1e-6 and 0 < r["min_ms"] <= r["p50_ms"]
        assert r["timed"] == 2  # batch-1 inferences of the counted round: the same count for every model, no warm-up among them
        # the bound counts the distinct held-out photos, not the crops (crops of one photo answer alike)
        assert r["lower_bound"] == pytest.approx(wilson_lower_bound(r["agreement"] * len(doc["held_photos"]), len(doc["held_photos"])))
    # each model measured as what it is: the ONNX models with ONNX Runtime's defaults, NNCF's IR as the pipeline's candidate
    assert [r["engine"] for r in doc["rows"]] == ["onnx-fp32", "onnx-int8", "onnx-int8-2", "openvino-int8-nncf"]
    assert doc["rows"][1]["claim"] in ("met", "evidence too thin", "missed") and "cross-fitting" in doc["rows"][1]["photo_use"]
    md = int8_peers.markdown(doc)
    assert all(f"| {n} |" in md for n in names) and ", ".join(cpu_info().simd) in md
    assert ("not to be quoted" in md) == doc["disturbed"]


def test_nncf_prints_nothing_on_stdout(tmp_path, capfd):
    """Found by a new user's walk: `-q pipeline ... > out` put NNCF's progress bars ("Statistics collection ━━━ 100%")
    into the file. What NNCF prints goes to the debug log; stdout holds only what a command says."""
    pytest.importorskip("nncf")
    from edge_inception.engines.openvino import nncf_quantize_ir

    from .stream_media import tiny_classifier

    model = tiny_classifier(tmp_path / "m.onnx")
    batches = [np.random.default_rng(i).random((1, 3, 64, 64), dtype=np.float32) for i in range(4)]
    capfd.readouterr()
    nncf_quantize_ir(model, tmp_path / "m.nncf.xml", batches)
    out, _ = capfd.readouterr()
    assert out == "" and (tmp_path / "m.nncf.xml").is_file(), out
