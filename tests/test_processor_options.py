"""Processor inputs and preprocessor settings that transformers' own LLaVA and CLIP processor tests exercise, on
copies of the demo folder: each either gives transformers' result or is refused with a one-line error, as
transformers itself fails on it."""
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoProcessor

import minillava
from minillava import ImageError, Processor, PromptError
from tests.helpers import skip_before_convert_rgb_of_5_23

RNG = np.random.default_rng(0)
PHOTO = RNG.integers(0, 256, (50, 70, 3), dtype=np.uint8)


def demo_copy(tmp_path, **preprocessor):
    """A copy of the demo folder with some preprocessor_config.json settings changed."""
    folder = shutil.copytree(minillava.DEMO, tmp_path / "demo")
    path = folder / "preprocessor_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **preprocessor}))
    return folder


def both(folder):
    return Processor.from_pretrained(folder), AutoProcessor.from_pretrained(folder, backend="pil")


def test_no_text_and_no_images(tmp_path):
    ours, theirs = both(minillava.DEMO)
    with pytest.raises(ValueError, match="at least one input"):
        theirs()
    with pytest.raises(PromptError, match="at least one input"):
        ours()


def test_clip_do_pad_pads_the_batch_to_the_largest(tmp_path):
    # do_center_crop false: 40x90 and 120x50 resize to 216x96 and 96x230; do_pad pads both to 216x230
    folder = demo_copy(tmp_path, do_center_crop=False, do_pad=True)
    ours, theirs = both(folder)
    images = [Image.fromarray(RNG.integers(0, 256, (90, 40, 3), dtype=np.uint8)),
              Image.fromarray(RNG.integers(0, 256, (50, 120, 3), dtype=np.uint8))]
    want = theirs.image_processor(images, return_tensors="pt")["pixel_values"]
    assert want.shape == (2, 3, 216, 230)
    for backend in ("pil", "torch"):
        got = ours.preprocess(images, backend=backend)
        assert got.shape == want.shape
        assert (got[:, :, 96:, 96:] == 0).all()  # zeros below and right, after normalizing
    assert torch.equal(ours.preprocess(images), want)


def test_different_sizes_without_padding_are_refused(tmp_path):
    folder = demo_copy(tmp_path, do_center_crop=False)
    ours, theirs = both(folder)
    images = [PHOTO, PHOTO[:, :40]]
    with pytest.raises(ValueError, match="inhomogeneous"):
        theirs.image_processor(images, return_tensors="pt")
    with pytest.raises(ImageError, match=r"different sizes \(\(96, 134\), \(120, 96\)\).*do_center_crop"):
        ours.preprocess(images)
    assert ours.preprocess([PHOTO, PHOTO]).shape == (2, 3, 96, 134)  # one size: fine


def test_do_convert_rgb_false(tmp_path):
    skip_before_convert_rgb_of_5_23()
    folder = demo_copy(tmp_path, do_convert_rgb=False)
    ours, theirs = both(folder)
    rgba = Image.fromarray(np.dstack([PHOTO, PHOTO[..., :1]]))
    for image in (rgba, rgba.convert("L"), np.dstack([PHOTO, PHOTO[..., :1]])):
        with pytest.raises(ValueError, match="mean must have"):
            theirs.image_processor([image], return_tensors="pt")
        with pytest.raises(ImageError, match="do_convert_rgb: false"):
            ours.preprocess([image])
    for image in (PHOTO, Image.fromarray(PHOTO)):  # RGB goes through unchanged
        want = theirs.image_processor([image], return_tensors="pt")["pixel_values"]
        assert torch.equal(ours.preprocess([image]), want)
    # with do_convert_rgb (the default) the RGBA image is composited, in both
    ours, theirs = both(minillava.DEMO)
    assert torch.equal(ours.preprocess([rgba]), theirs.image_processor([rgba], return_tensors="pt")["pixel_values"])


@pytest.mark.parametrize("name", ["chw numpy", "chw uint8 tensor", "hwc uint8 tensor", "1hw numpy"])
def test_channels_first_arrays_and_tensors(name):
    if name == "1hw numpy":
        skip_before_convert_rgb_of_5_23()
    ours, theirs = both(minillava.DEMO)
    image = {"chw numpy": PHOTO.transpose(2, 0, 1).copy(), "chw uint8 tensor": torch.from_numpy(PHOTO).permute(2, 0, 1),
             "hwc uint8 tensor": torch.from_numpy(PHOTO), "1hw numpy": PHOTO[None, ..., 0].copy()}[name]
    want = theirs.image_processor([image], return_tensors="pt")["pixel_values"]
    assert torch.equal(ours.preprocess([image]), want)
    assert torch.equal(ours.preprocess([image], backend="torch"), ours.preprocess([image], backend="torch"))
    if name != "1hw numpy":  # the same pixels as the (H, W, 3) array
        assert torch.equal(ours.preprocess([image]), ours.preprocess([PHOTO]))


def test_float_tensors_are_refused():
    ours, _ = both(minillava.DEMO)
    with pytest.raises(ImageError, match="torch.float32; expected uint8"):
        ours.preprocess([torch.from_numpy(PHOTO).permute(2, 0, 1).float()])


@pytest.mark.parametrize("settings", [dict(size=96, crop_size=96), dict(size=80, crop_size=64, do_center_crop=True),
                                      dict(image_mean=0.5, image_std=0.25), dict(image_mean=1, image_std=2)])
def test_integer_sizes_and_scalar_mean_std(tmp_path, settings):
    folder = demo_copy(tmp_path, **settings)
    ours, theirs = both(folder)
    for image in (PHOTO, PHOTO[:30]):
        want = theirs.image_processor([image], return_tensors="pt")["pixel_values"]
        assert torch.equal(ours.preprocess([image]), want)
