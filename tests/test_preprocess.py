"""Inputs read exactly as the reference reads them: torchvision's geometry to the pixel, transparency over white,
one list of image formats, a warning where integer class folders are ambiguous; and the fast path against the reference."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from edge_inception.data.datasets import scan_image_folder
from edge_inception.data.images import IMAGE_EXTENSIONS, find_images, load_image, load_tensor, normalize, preprocess, reference_geometry, to_rgb
from edge_inception.evaluate.predict import folder_labels, folder_order_warning
from edge_inception.vocab import FolderOrder, PreprocessMode

SIZES = [(640, 427), (427, 640), (259, 300), (1000, 667), (500, 375), (375, 500), (224, 224), (256, 256), (4032, 3024), (3024, 4032),
         (1920, 1080), (1080, 1920), (301, 299), (333, 251), (1200, 801), (799, 533), (225, 400), (600, 257)]


def torchvision_formula(w: int, h: int, size: int = 256, crop: int = 224) -> tuple[tuple[int, int], tuple[int, int]]:
    """torchvision.transforms.functional: _compute_resized_output_size (an int size) and center_crop, as written there."""
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    crop_top = int(round((new_h - crop) / 2.0))
    crop_left = int(round((new_w - crop) / 2.0))
    return (new_w, new_h), (crop_left, crop_top)


@pytest.mark.parametrize("w,h", SIZES + [(w, h) for w in range(224, 1200, 37) for h in (224, 300, 427, 511, 768)])
def test_geometry_is_torchvisions_formula(w, h):
    g = reference_geometry(w, h)
    resized, (left, top) = torchvision_formula(w, h)
    assert g.resized == resized
    assert g.box == (left, top, left + 224, top + 224)


def test_the_reported_sizes_truncate_and_round():
    assert reference_geometry(640, 427).resized == (383, 256)  # 383.7: truncated, not rounded to 384
    assert reference_geometry(1000, 667).resized == (383, 256)
    assert reference_geometry(259, 300).resized == (256, 296)  # 296.5 -> 296
    assert reference_geometry(640, 427).box[0] == 80  # (383 - 224) / 2 = 79.5 rounds to 80 (floor division gave 79)


@pytest.mark.parametrize("w,h", SIZES[:8])
def test_preprocess_feeds_the_reference_tensor(w, h):
    rng = np.random.default_rng(w * h)
    im = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    (nw, nh), (left, top) = torchvision_formula(w, h)
    expected = normalize(im.resize((nw, nh), Image.Resampling.BILINEAR).crop((left, top, left + 224, top + 224)))
    np.testing.assert_array_equal(preprocess(im), expected)


@pytest.mark.parametrize("w,h", SIZES[:6])
def test_against_torchvision_where_installed(w, h):
    transforms = pytest.importorskip("torchvision.transforms")
    rng = np.random.default_rng(w + h)
    im = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    ref = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
                              transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])(im).numpy()
    np.testing.assert_allclose(preprocess(im), ref, atol=1e-6)


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
    # DCT-domain decoding and the crop's own resampling move pixels by about one level of 255 on average, no more
    assert max(diffs) < 0.02, diffs
    # a PNG is decoded fully: only the crop's resampling differs, by float rounding of the box (at most one level of 255)
    png = tmp_path / "p.png"
    load_image(photos[0]).resize((900, 601)).save(png)
    assert np.abs(load_tensor(png, 224, PreprocessMode.fast) - load_tensor(png, 224, PreprocessMode.exact)).max() < 1.01 / 255 / 0.224


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
