"""Inputs read exactly as the reference reads them: torchvision's geometry to the pixel, transparency over white,
one list of image formats, a warning where integer class folders are ambiguous; and the fast path against the reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge_inception.data.datasets import scan_image_folder
from edge_inception.data.images import IMAGE_EXTENSIONS, find_images, load_image, load_tensor, normalize, preprocess, reference_geometry, to_rgb
from edge_inception.evaluate.predict import folder_labels, folder_order_warning
from edge_inception.vocab import FolderOrder, PreprocessMode

# torchvision's own answers, generated once by tests/fixtures/make_torchvision_fixture.py (torchvision 0.28.0, torch 2.13.0):
# the geometry of Resize(256) + CenterCrop(224) read back from torchvision's code, and the normalised tensors it gives
TORCHVISION = np.load(Path(__file__).parent / "fixtures" / "torchvision_preprocess.npz")
GEOMETRY_CASES = [(int(w), int(h), tuple(map(int, r)), tuple(map(int, b)))
                  for (w, h), r, b in zip(TORCHVISION["sizes"], TORCHVISION["resized"], TORCHVISION["box"])]


def test_the_fixture_says_where_it_came_from():
    versions = list(TORCHVISION["versions"])
    assert versions[0].startswith("torchvision 0.28.0") and versions[1].startswith("torch 2.13.0")
    assert len(GEOMETRY_CASES) >= 153 and TORCHVISION["tensors"].shape == (8, 3, 28, 28)


@pytest.mark.parametrize("w,h,resized,box", GEOMETRY_CASES, ids=[f"{c[0]}x{c[1]}" for c in GEOMETRY_CASES])
def test_geometry_is_torchvisions(w, h, resized, box):
    g = reference_geometry(w, h)
    assert g.resized == resized
    assert g.box == box


def test_the_reported_sizes_truncate_and_round():
    assert reference_geometry(640, 427).resized == (383, 256)  # 383.7: truncated, not rounded to 384
    assert reference_geometry(1000, 667).resized == (383, 256)
    assert reference_geometry(259, 300).resized == (256, 296)  # 296.5 -> 296
    assert reference_geometry(640, 427).box[0] == 80  # (383 - 224) / 2 = 79.5 rounds to 80 (floor division gave 79)


@pytest.mark.parametrize("i", range(len(TORCHVISION["tensor_sizes"])))
def test_preprocess_gives_torchvisions_tensor(i):
    w, h = (int(v) for v in TORCHVISION["tensor_sizes"][i])
    im = Image.fromarray(np.random.default_rng(w + h).integers(0, 256, (h, w, 3), dtype=np.uint8))  # as the fixture script drew it
    ours = preprocess(im)
    assert ours.shape == (3, 224, 224) and ours.dtype == np.float32
    np.testing.assert_allclose(ours[:, ::8, ::8], TORCHVISION["tensors"][i], atol=1e-6)
    np.testing.assert_allclose(ours.astype(np.float64).mean(axis=(1, 2)), TORCHVISION["channel_means"][i], atol=1e-6)


def test_normalize_against_torchvisions_constants():
    """ToTensor + Normalize by hand: (v / 255 - mean) / std, with ImageNet's mean and std as torchvision documents them."""
    im = Image.fromarray(np.array([[[0, 128, 255], [255, 0, 64]]], dtype=np.uint8))  # 1 x 2 pixels
    out = normalize(im)
    assert out.shape == (3, 1, 2)
    np.testing.assert_allclose(out[:, 0, 0], [(0 - 0.485) / 0.229, (128 / 255 - 0.456) / 0.224, (1 - 0.406) / 0.225], atol=1e-6)
    np.testing.assert_allclose(out[:, 0, 1], [(1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (64 / 255 - 0.406) / 0.225], atol=1e-6)


def _hidden_pixel_is_white(path):
    rgb = np.asarray(load_image(path))
    assert tuple(rgb[0, 0]) == (255, 255, 255), f"{path.name}: hidden pixel {rgb[0, 0]}"
    assert tuple(rgb[5, 5]) != (255, 255, 255)


def test_every_transparency_form_goes_over_white(tmp_path):
    base = np.full((8, 8, 3), 40, np.uint8)
    base[0, 0] = 0  # the hidden pixel: black as stored
    alpha = np.full((8, 8), 255, np.uint8)
    alpha[0, 0] = 0
    Image.fromarray(np.dstack([base, alpha]), "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(np.dstack([base[..., 0], alpha]), "LA").save(tmp_path / "la.png")
    Image.fromarray(base, "RGB").save(tmp_path / "rgb_trns.png", transparency=(0, 0, 0))  # a colour key (tRNS), as optimisers write
    Image.fromarray(base[..., 0], "L").save(tmp_path / "l_trns.png", transparency=0)
    pal = Image.fromarray(base, "RGB").quantize(4)
    key = pal.getpixel((0, 0))
    pal.save(tmp_path / "p_trns.png", transparency=key)
    pal.save(tmp_path / "p_trns.gif", transparency=key)
    for name in ("rgba.png", "la.png", "rgb_trns.png", "l_trns.png", "p_trns.png", "p_trns.gif"):
        _hidden_pixel_is_white(tmp_path / name)
    with Image.open(tmp_path / "rgb_trns.png") as im:
        assert im.mode == "RGB" and "transparency" in im.info  # the form that reached the model unchanged before
        assert tuple(np.asarray(to_rgb(im))[0, 0]) == (255, 255, 255)


def test_one_list_of_formats_by_name_and_in_folders(tmp_path):
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8))
    for cls in ("a", "b"):
        for ext in (".tif", ".tiff", ".webp", ".bmp", ".jpg", ".png"):
            assert ext in IMAGE_EXTENSIONS
            (tmp_path / cls).mkdir(exist_ok=True)
            photo.save(tmp_path / cls / f"x{ext}")
    folder = scan_image_folder(tmp_path)
    assert len(folder.samples) == 12 and not folder.skipped
    assert len(find_images([tmp_path]).images) == 12
    assert len(find_images([tmp_path / "a" / "x.tif"]).images) == 1


def test_integer_folders_ambiguous_order_warns_and_is_chosen():
    folders = sorted(str(i) for i in range(12))  # scan order: 0, 1, 10, 11, 2, ...
    assert folder_labels(folders, None, 12, FolderOrder.numeric) == [int(f) for f in folders]
    assert folder_labels(folders, None, 12, FolderOrder.imagefolder) == list(range(12))
    assert "imagefolder" in (folder_order_warning(folders, None, FolderOrder.numeric) or "")
    assert folder_order_warning([str(i) for i in range(10)], None, FolderOrder.numeric) is None  # both orders agree
    assert folder_order_warning(folders, folders, FolderOrder.numeric) is None  # class names settle it


def _big_jpeg(tmp_path, photo, size, name, quality=90):
    im = load_image(photo).resize(size, Image.Resampling.BICUBIC)
    path = tmp_path / name
    im.save(path, quality=quality)
    return path


def test_fast_path_matches_reference_geometry_on_real_photos(tmp_path):
    from edge_inception.data.images import bundled_photos

    photos = bundled_photos()
    diffs = []
    for i, photo in enumerate(photos[:6]):
        size = [(1800, 1200), (1000, 1500), (1600, 1200)][i % 3]
        path = _big_jpeg(tmp_path, photo, size, f"p{i}.jpg")
        exact = load_tensor(path, 224, PreprocessMode.exact)
        fast = load_tensor(path, 224, PreprocessMode.fast)
        assert fast.shape == exact.shape == (3, 224, 224)
        diffs.append(np.abs(fast - exact).mean())
    # DCT-domain decoding and the crop's own resampling move pixels by less than one level of 255 on average
    assert max(diffs) < 0.02, diffs


def _levels(a, b):
    """Mean and largest difference between two normalised tensors, in levels of 255 (the green channel's std)."""
    d = np.abs(a - b) * 0.224 * 255
    return float(d.mean()), float(d.max())


def _full_size_cases(tmp_path):
    """Real photos (scikit-image's) written in every full-size form the fast path must give exactly: formats, modes,
    sizes (odd, non-square, smaller than the 256 resize, 10:1), an EXIF-rotated PNG; (name, path, upright RGB image)."""
    from edge_inception.data.images import bundled_photos

    photos = {p.name: load_image(p) for p in bundled_photos()}
    cases = []

    def add(name, image, **save):
        path = tmp_path / name
        image.save(path, **save)
        cases.append((name, path))

    chelsea, coins, rocket, astro = photos["chelsea.png"], photos["coins.png"], photos["rocket.jpg"], photos["astronaut.png"]
    add("chelsea.png", chelsea)  # 451 x 300
    add("rocket.tif", rocket.resize((900, 601)))
    add("coffee.bmp", photos["coffee.png"].resize((1000, 123)))  # 8:1
    add("tall.png", astro.resize((123, 1000)))  # 1:8
    add("wide10.png", rocket.resize((2000, 200)))  # 10:1
    add("small.png", chelsea.resize((201, 150)))  # smaller than the resize: upscaled
    add("narrow.png", astro.resize((257, 1000)))  # Pillow resamples this one vertically first
    add("grey.png", photos["camera.png"].convert("L").resize((700, 455)))
    add("coins_grey.png", coins.convert("L"))  # 384 x 303
    add("palette.png", chelsea.resize((640, 427)).quantize(256))
    add("palette.gif", rocket.resize((333, 500)).quantize(64))
    rgba = np.dstack([np.asarray(astro.resize((600, 500))), np.tile(np.linspace(0, 255, 600, dtype=np.uint8), (500, 1))])
    add("rgba.png", Image.fromarray(rgba, "RGBA"))
    grey16 = (np.asarray(photos["moon.png"].convert("L").resize((519, 512)), dtype=np.uint16) * 257 + 128).astype(np.uint16)
    add("grey16.png", Image.fromarray(grey16))  # saved as a 16-bit greyscale PNG
    add("lossless.webp", coins.resize((700, 800)), lossless=True)
    add("small.jpg", chelsea.resize((500, 333)), quality=90)  # too small to decode at reduced scale: decoded fully
    exif = Image.Exif()
    exif[0x0112] = 6
    add("rotated.png", rocket.resize((640, 480)).rotate(90, expand=True), exif=exif)
    return cases


def test_fast_path_is_the_reference_on_every_full_size_image(tmp_path):
    """PNG, TIFF, BMP, WebP, GIF, greyscale, palette, RGBA, 16-bit, EXIF-rotated, small JPEG, odd sizes: bit for bit."""
    from edge_inception.data.images import crop_resize

    crop_only_differs = []
    cases = _full_size_cases(tmp_path)
    modes = {}
    for name, path in cases:
        with Image.open(path) as opened:
            modes[name] = opened.mode
    assert {modes[n] for n in ("grey16.png", "palette.png", "palette.gif", "rgba.png", "grey.png")} == {"I;16", "P", "RGBA", "L"}, modes
    for name, path in cases:
        exact = load_tensor(path, 224, PreprocessMode.exact)
        fast = load_tensor(path, 224, PreprocessMode.fast)
        assert fast.dtype == exact.dtype == np.float32 and np.array_equal(fast, exact), (name, _levels(fast, exact))
        crop_only_differs.append(not np.array_equal(crop_resize(load_image(path)), exact))
    # the test can fail: resampling only the crop (resize(box=...), the fast path before) is not the reference on these
    assert sum(crop_only_differs) >= 3, crop_only_differs
    assert load_tensor(tmp_path / "rotated.png", 224, PreprocessMode.fast).shape == (3, 224, 224)
    assert load_image(tmp_path / "rotated.png").size == (640, 480)  # read upright


def test_reduced_jpeg_keeps_the_reference_geometry_to_the_pixel(tmp_path):
    """A JPEG decoded at 1/s: the crop box is the reference's scaled by exactly 1/s (libjpeg's ceil(side / s) pixels are
    not the scale); within a few levels of the reference, where the geometry's mistakes are ten times that."""
    from edge_inception.data.images import _decode_reduced, bundled_photos, crop_resize

    photos = bundled_photos()
    for i, size in enumerate([(4031, 3023), (1801, 1201), (1203, 2405), (3001, 1999)]):
        path = _big_jpeg(tmp_path, photos[i], size, f"odd{i}.jpg", quality=92)
        exact = load_tensor(path, 224, PreprocessMode.exact)
        fast = load_tensor(path, 224, PreprocessMode.fast)
        image, full, scale = _decode_reduced(path, 224)
        assert scale is not None and scale[0] in (0.5, 0.25, 0.125) and image.size[0] < full[0] and full == size
        mean, worst = _levels(fast, exact)
        assert mean < 0.4 and worst <= 4.0, (size, mean, worst)
        # mutations the checks above catch: the scale from the decoded size (ceil), the box one decoded pixel off, no box
        g = reference_geometry(*full)
        sx, sy = scale[0] * full[0] / g.resized[0], scale[1] * full[1] / g.resized[1]
        left, top, right, bottom = g.box
        wrong = {"ceil scale": crop_resize(image, full),
                 "off by one": normalize(image.resize((224, 224), Image.Resampling.BILINEAR,
                                                      box=(left * sx + 1, top * sy + 1, right * sx + 1, bottom * sy + 1))),
                 "no box": normalize(image.resize((224, 224), Image.Resampling.BILINEAR))}
        for what, tensor in wrong.items():
            m, w = _levels(tensor, exact)
            assert m >= 0.4 or w > 4.0, (size, what, m, w)


def test_fast_path_greyscale_jpeg_as_close_as_colour(tmp_path):
    """A greyscale JPEG decoded at reduced scale (libjpeg scales the one channel; converted to RGB after) is no further
    from the reference than the same picture in colour."""
    from edge_inception.data.images import bundled_photos

    im = load_image(bundled_photos()[3]).resize((2001, 1501), Image.Resampling.BICUBIC)
    im.save(tmp_path / "c.jpg", quality=90)
    im.convert("L").save(tmp_path / "g.jpg", quality=90)
    with Image.open(tmp_path / "g.jpg") as opened:
        assert opened.mode == "L"
    got = {n: _levels(load_tensor(tmp_path / n, 224, PreprocessMode.fast), load_tensor(tmp_path / n, 224, PreprocessMode.exact))
           for n in ("c.jpg", "g.jpg")}
    assert got["g.jpg"][0] <= got["c.jpg"][0] + 0.05 and got["g.jpg"][1] <= 4.0, got


def test_fast_path_keeps_exif_orientation(tmp_path):
    from edge_inception.data.images import bundled_photos

    im = load_image(bundled_photos()[3]).resize((1200, 800))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: rotate 90 degrees to view
    im.rotate(90, expand=True).save(tmp_path / "r.jpg", quality=95, exif=exif)
    im.save(tmp_path / "u.jpg", quality=95)
    rotated = load_tensor(tmp_path / "r.jpg", 224, PreprocessMode.fast)
    upright = load_tensor(tmp_path / "u.jpg", 224, PreprocessMode.fast)
    assert np.abs(rotated - upright).mean() < 0.05


def test_eval_states_fast_against_exact_on_a_bounded_sample(tmp_path):
    """eval --preprocess fast runs a stated number of its images through exact too: identical tensors for full-size
    images, measured top-1 agreement and largest |dp| for JPEGs decoded at reduced scale; none with exact or 0."""
    from typer.testing import CliRunner

    from edge_inception.cli import app
    from edge_inception.data.images import bundled_photos
    from edge_inception.engines.registry import open_runner
    from edge_inception.evaluate.predict import evaluate
    from edge_inception.evaluate.preprocess_agreement import fast_exact_agreement, photo_jpegs, spread_sample

    from .stream_media import tiny_classifier  # a small real ONNX classifier (64 px, classes class0 ... class9)

    model = tiny_classifier(tmp_path / "tiny.onnx")
    photos = {p.name: p for p in bundled_photos()}
    data = tmp_path / "data"
    (data / "class0").mkdir(parents=True)
    (data / "class1").mkdir()
    for i, size in enumerate([(640, 480), (480, 720)]):  # the 64-pixel model decodes these at reduced scale (short side > 146)
        _big_jpeg(data / "class0", photos["chelsea.png"], size, f"c{i}.jpg")
    for i, size in enumerate([(384, 303), (300, 500)]):
        load_image(photos["coins.png"]).resize(size).save(data / "class1" / f"k{i}.png")
    r = evaluate(model, data, agreement_sample=3)
    a = r.preprocess_agreement
    assert a is not None and (a.images, a.population) == (3, 4) and 1 <= a.reduced <= 2
    assert 0.0 <= a.top1_agreement <= 1.0 and 0.0 < a.max_abs_input and 0.0 <= a.max_abs_dp < 1.0
    assert set(a.as_dict()) == {"images", "of", "decoded_at_reduced_scale", "top1_agreement", "max_abs_dp", "max_abs_input"}
    assert evaluate(model, data, mode=PreprocessMode.exact).preprocess_agreement is None
    assert evaluate(model, data, agreement_sample=0).preprocess_agreement is None
    assert spread_sample(list(range(10)), 3) == [0, 4, 9] and spread_sample([1, 2], 5) == [1, 2]

    with open_runner(model) as runner:  # PNGs only: the reference exactly, no model run needed
        pngs = fast_exact_agreement(runner, sorted((data / "class1").glob("*.png")), 64)
        assert (pngs.images, pngs.reduced, pngs.top1_agreement, pngs.max_abs_dp, pngs.max_abs_input) == (2, 0, 1.0, 0.0, 0.0)
        jpegs = fast_exact_agreement(runner, photo_jpegs(tmp_path, 3), 64)
        assert (jpegs.images, jpegs.reduced) == (3, 3) and jpegs.max_abs_input > 0
    # the pipeline report's statement: the shipped artifact on 12 JPEG crops of the bundled photos, all decoded at reduced scale
    from edge_inception.pipeline import preprocessing_agreement

    stated = preprocessing_agreement(model.parent, {"ship": {"artifact": model.name}, "artifacts": {}}, 64)
    assert stated is not None and (stated["images"], stated["of"], stated["decoded_at_reduced_scale"]) == (12, 12, 12)
    assert preprocessing_agreement(model.parent, {"ship": {"artifact": None}, "artifacts": {}}, 64) is None

    out = CliRunner().invoke(app, ["eval", str(model), "--data", str(data), "--agreement-sample", "2"])
    assert out.exit_code == 0, out.output
    assert "4 images: top-1" in out.stdout and "fast vs exact preprocessing on 2 of 4 images" in out.stdout and "max |dp|" in out.stdout
    out = CliRunner().invoke(app, ["eval", str(model), "--data", str(data), "--preprocess", "exact"])
    assert out.exit_code == 0 and "fast vs exact" not in out.stdout
