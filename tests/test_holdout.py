"""Photos the user keeps apart (``--holdout``, issue 39): scanned as a folder from outside (no link leaving it, a bounded
count, unreadable files counted), never calibrated or chosen on, and the evidence every candidate's judge reads in the
pipeline, its bound computed over the folder's distinct photos."""

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edge_inception.cli import app
from edge_inception.convert.calibration import scan_holdout, select_images, set_digest
from edge_inception.data.images import bundled_photos, scan_photo_folder
from edge_inception.evaluate.verdict import wilson_lower_bound
from edge_inception.limits import LimitError

runner = CliRunner()


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _copy(folder: Path, photos: list[Path]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for p in photos:
        shutil.copyfile(p, folder / p.name)
    return folder


def test_holdout_folder_counts_distinct_photos_and_is_left_out_of_calibration(tmp_path):
    photos = bundled_photos()
    held = tmp_path / "held"
    _copy(held / "class-a", photos[6:8])  # ImageFolder layout: the class folders' names are not used
    _copy(held / "class-b", photos[8:9])
    shutil.copyfile(photos[6], held / "class-b" / "copy-of-a-photo.png")  # a duplicate: one photo
    (held / "inside.png").symlink_to(held / "class-a" / photos[7].name)  # a link inside the folder: read, one photo
    (held / "also-a").symlink_to(held / "class-a", target_is_directory=True)  # a linked folder inside: not walked twice
    (held / "notes.txt").write_text("not an image")
    (held / "broken.png").write_bytes(b"\x89PNG not really")
    (held / ".hidden.png").write_bytes(b"x")  # hidden files are left out, as everywhere
    (held / "loop-a.png").symlink_to(held / "loop-b.png")  # a loop of links reads nothing: skipped (it was a traceback)
    (held / "loop-b.png").symlink_to(held / "loop-a.png")
    h = scan_holdout(held)
    assert len(h.photos) == 3 and h.duplicates == 2 and h.skipped == 4
    assert h.photos_sha256 == sorted(_sha(p) for p in photos[6:9]) and h.sha256 == set_digest([_sha(p) for p in photos[6:9]])
    assert "3 distinct photo(s)" in h.describe() and h.sha256[:16] in h.describe()

    # a calibration folder sharing a photo with the holdout: that photo is judged only, never calibrated or chosen on
    calib = _copy(tmp_path / "calib", photos[:5] + photos[6:7])
    sets = select_images(calib, held, calib_size=10)
    assert sets.holdout is not None and sets.holdout.sha256 == h.sha256
    final, chose = set(sets.final.as_dict()["photos_sha256"]), set(sets.selection.as_dict()["photos_sha256"])
    assert len(final) == 5 and not final & set(h.photos_sha256) and not chose & set(h.photos_sha256)
    assert sets.verdict.as_dict()["photos_sha256"] == h.photos_sha256  # the verdict is exactly the held-out photos
    assert any("1 photo(s) of the calibration photos are also in --holdout" in w for w in sets.warnings)


def test_every_holdout_photo_is_judged_up_to_the_limit(tmp_path):
    from PIL import Image

    many = tmp_path / "many"
    many.mkdir()
    for i in range(301):  # tiny distinct images: more than the cross-fitted verdict's 300
        Image.new("RGB", (16, 16), (i % 256, i // 256, 7)).save(many / f"{i:03d}.png")
    sets = select_images(_copy(tmp_path / "calib", bundled_photos()[:3]), many, calib_size=5)
    assert sets.verdict.images == 301 and all(s.box is None for s in sets.verdict.samples)  # each photo once, whole
    with pytest.raises(LimitError, match="more than 300 image files"):
        scan_photo_folder(many, "--holdout", 300)


def _bad_folders(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("x")
    leaks = _copy(tmp_path / "leaks", bundled_photos()[:1])
    (leaks / "secret.png").symlink_to(bundled_photos()[1])  # a link out of the folder, even to a real photo
    hostile = tmp_path / "evil\x1b[2J\nerror: forged"
    hostile.mkdir()
    a_file = tmp_path / "one.png"
    shutil.copyfile(bundled_photos()[0], a_file)
    return {"empty": (empty, "no readable images"), "link": (leaks, "outside the folder"), "hostile": (hostile, "no readable images"),
            "file": (a_file, "not a folder"), "missing": (tmp_path / "nosuch", "no such folder")}


@pytest.mark.parametrize("case", ["empty", "link", "hostile", "file", "missing"])
def test_a_bad_holdout_folder_is_one_line_and_exit_1(trained, tmp_path, case):
    folder, message = _bad_folders(tmp_path)[case]
    for cmd in (["pipeline", "--weights", str(trained.checkpoint), "--precisions", "fp32,int8", "-o", str(tmp_path / "run")],
                ["quantize", str(trained.onnx), "--precision", "int8", "-o", str(tmp_path / "q.onnx")]):
        r = runner.invoke(app, [*cmd, "--holdout", str(folder)])
        assert r.exit_code == 1, r.output
        lines = r.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: --holdout ") and message in lines[0], r.stderr
        assert "\x1b" not in r.stderr and "Traceback" not in r.stderr
        if case == "hostile":
            assert "evil\\x1b[2J\\nerror: forged" in lines[0]  # the name escaped: it can neither clear the screen nor forge a line
    assert not (tmp_path / "run").exists() and not list(tmp_path.glob(".run*")) and not (tmp_path / "q.onnx").exists()


def test_demo_data_holds_photos_none_of_its_crops_come_from(demo_data):
    from edge_inception.data.demo_data import DEMO_CLASSES, HOLDOUT_PHOTOS

    h = scan_holdout(demo_data / "holdout")
    by_name = {p.name: p for p in bundled_photos()}
    assert sorted(p.name for p in h.photos) == sorted(HOLDOUT_PHOTOS) and len(HOLDOUT_PHOTOS) == 4
    assert not set(HOLDOUT_PHOTOS) & set(DEMO_CLASSES.values())
    assert h.photos_sha256 == sorted(_sha(by_name[n]) for n in HOLDOUT_PHOTOS)  # the bundled photos byte for byte


def test_pipeline_judges_every_candidate_on_the_holdout(trained, tmp_path):
    """The real pipeline with --calib (six photos, one of them also held out) and --holdout (8 photos, a copy, a text
    file): nothing held out is calibrated on, ours or NNCF's; every candidate is verified on exactly the held-out photos;
    the INT8 judge's bound is Wilson's over those 8 photos; the ship line and the report say what the judge saw."""
    photos = bundled_photos()
    calib = _copy(tmp_path / "calib", photos[:7])
    held = _copy(tmp_path / "held", photos[6:14])
    shutil.copyfile(photos[8], held / "again.png")
    (held / "readme.txt").write_text("x")
    out = tmp_path / "run"
    r = runner.invoke(app, ["pipeline", "--weights", str(trained.checkpoint), "--precisions", "fp32,int8", "--calib", str(calib),
                            "--calib-size", "20", "--holdout", str(held), "--min-agreement", "0.5", "--iterations", "2", "--rounds", "1",
                            "-o", str(out)])
    assert r.exit_code == 0, r.output
    report = json.loads((out / "report.json").read_text())
    kept = sorted(_sha(p) for p in photos[6:14])
    hold = report["holdout"]
    assert hold["photos"] == 8 and hold["duplicates"] == 1 and hold["skipped"] == 1 and hold["photos_sha256"] == kept
    assert hold["sha256"] == set_digest(kept) and "none of them calibrated on" in hold["use"]

    # nothing held out was calibrated on or chosen on: our INT8 (every role) and NNCF's, by the recorded hashes
    q = report["quantization"]["int8"]
    roles = json.loads((out / "model.int8.report.json").read_text())["roles"]
    for role in ("calibration", "selection", "final_calibration"):
        assert not set(roles[role]["photos_sha256"]) & set(kept), role
    assert roles["final_calibration"]["distinct_images"] == 6 and roles["verdict"]["photos_sha256"] == kept
    assert roles["final_calibration"]["samples"] == 20 == roles["calibration"]["samples"]  # --calib-size 20, as quantize's
    assert "--holdout" in q["photo_use"] and any("also in --holdout" in w for w in q["warnings"])
    nncf = json.loads((out / (report["artifacts"]["openvino-int8-nncf"] + ".manifest.json")).read_text())["options"]
    assert nncf["calibration_sha256"] == roles["final_calibration"]["sha256"]  # the same six photos as ours
    assert nncf["calibration"] == roles["final_calibration"]["source"] and nncf["calibration"].startswith("20 ")  # and as many crops

    # every candidate verified on the 8 held-out photos, whole; the INT8 judge's bound over those 8
    assert report["verification_photos"] == 8 and all(v["samples"] == 8 for v in report["verification_vs_pytorch"].values())
    int8 = [c for c in report["candidates"] if c["precision"] == "int8"]
    assert {c["name"] for c in int8} == {"ort-int8", "openvino-int8", "openvino-int8-nncf"}
    for c in int8:
        bound = wilson_lower_bound(c["agreement"] * 8, 8)
        expected = "passed" if bound >= 0.5 else "failed" if c["agreement"] < 0.5 else "unproven"
        assert c["judged"] == expected, c
        if expected != "passed":  # the reason gives the figure and its bound over the 8 photos
            assert f"of 8 photo(s), 95% lower bound {bound:.1%}" in c["note"]
    assert not report["ship"]["unproven"]  # a passed INT8 ships as proven; an unproven one never ships without --ship-unproven
    ship_line = next(line for line in r.stdout.splitlines() if line.startswith("ship: "))
    assert f"judged on --holdout {held}: 8 distinct photo(s), sha256 {hold['sha256'][:16]}" in ship_line
    assert f"- judged on: --holdout {held}: 8 distinct photo(s)" in (out / "report.md").read_text()
