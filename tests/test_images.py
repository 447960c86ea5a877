"""Images: unreadable, empty, huge (decompression bombs) or unusual images, against transformers' pixels.
"""
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from minillava import ImageError
from minillava.images import load_image
from tests.helpers import skip_before_convert_rgb_of_5_23
from tests.helpers.mistakes import photo, raises, save

# ---- images ------------------------------------------------------------------------------------------------

def test_unreadable_image_files(tiny_processor, tmp_path):
    jpeg = save(Image.fromarray(photo(200, 300)), tmp_path / "photo.jpg", quality=90).read_bytes()
    files = {"missing.png": None, "empty.png": b"", "garbage.jpg": b"\x89PNG\r\n\x1a\n not really" * 20,
             "truncated.jpg": jpeg[: len(jpeg) // 3], "header-only.jpg": jpeg[:200], "text.png": b"hello world\n"}
    for name, content in files.items():
        if content is not None:
            (tmp_path / name).write_bytes(content)
        msg = raises(ImageError, "image 1", name,
                     call=lambda: tiny_processor.preprocess([photo(), str(tmp_path / name)]))
        assert ("not found" if content is None else "cannot be read") in msg
    raises(ImageError, "image 0", "empty image", call=lambda: tiny_processor.preprocess([Image.new("RGB", (0, 7))]))
    raises(ImageError, "image 0", "empty image",
           call=lambda: tiny_processor.preprocess([np.zeros((0, 4, 3), np.uint8)]))
    raises(ImageError, "image 0", "NoneType", call=lambda: tiny_processor.preprocess([None]))
    raises(ImageError, "image 0", "uint16", call=lambda: tiny_processor.preprocess([photo().astype(np.uint16)]))


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_decompression_bombs_are_refused(tiny_processor, tmp_path, monkeypatch):
    # a PNG header that claims 100000 x 100000 pixels: refused from the header alone, before any decoding
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0)  # width, height, 8-bit RGB
    (tmp_path / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    raises(ImageError, "bomb.png", "too many pixels", call=lambda: tiny_processor.preprocess([tmp_path / "bomb.png"]))
    # PIL only warns between 1 and 2 x MAX_IMAGE_PIXELS; minillava refuses from 1 x
    save(Image.fromarray(photo(40, 60)), tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40 * 60 - 1)
    raises(ImageError, "big.png", "60x40", "too many pixels",
           call=lambda: tiny_processor.preprocess([tmp_path / "big.png"]))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40 * 60)
    assert tiny_processor.preprocess([tmp_path / "big.png"]).shape == (1, 3, 336, 336)


_hf = {}


def hf_pixels(proc_src, image):
    """transformers' pixel_values for one image (a path is opened with transformers' own load_image)."""
    from transformers import AutoProcessor
    from transformers.image_utils import load_image as hf_load_image
    if proc_src not in _hf:
        _hf[proc_src] = AutoProcessor.from_pretrained(proc_src, backend="pil")
    image = hf_load_image(image) if isinstance(image, str) else image
    return _hf[proc_src](text="<image>", images=[image], return_tensors="pt")["pixel_values"]


def same_pixels_as_transformers(cases, processor, proc_src, tmp_path):
    """Each image, as a PIL image and as the file it saves to, gives transformers' pixel values exactly."""
    for name, img in cases.items():
        save(img, tmp_path / name)
        for image in (img, str(tmp_path / name)):
            got = processor.preprocess([image])
            assert got.shape == (1, 3, 336, 336) and got.isfinite().all() and got.std() > 0.1
            assert torch.equal(got, hf_pixels(proc_src, image)), name


def test_palette_with_transparency(tiny_processor, proc_src, tmp_path):
    skip_before_convert_rgb_of_5_23()
    palette = Image.fromarray(photo()).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.info["transparency"] = 3  # one palette entry transparent: composited onto white
    same_pixels_as_transformers({"palette.png": palette}, tiny_processor, proc_src, tmp_path)


def test_unusual_but_valid_images(tiny_processor, proc_src, tmp_path):
    rgb = photo()
    # 16-bit grayscale: scaled to 8 bits (PIL's convert, and so transformers, clips it white)
    gray16 = (rgb[..., 0].astype(np.uint16) * 257)
    save(Image.fromarray(gray16), tmp_path / "gray16.png")
    with Image.open(tmp_path / "gray16.png") as img:
        assert img.mode == "I;16"
        for image in (tmp_path / "gray16.png", img):
            x = load_image(image)
            assert x.dtype == np.uint8 and x.shape == (40, 60, 3) and (x == rgb[..., :1]).all()
    # CMYK and grayscale, as transformers makes them (files and PIL images)
    cases = {"cmyk.jpg": Image.fromarray(rgb).convert("CMYK"), "gray.png": Image.fromarray(rgb).convert("L")}
    same_pixels_as_transformers(cases, tiny_processor, proc_src, tmp_path)
    gray = load_image(tmp_path / "gray.png")
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    # an animated GIF: the first frame
    frames = [Image.new("RGB", (30, 20), c) for c in ((200, 10, 10), (10, 200, 10), (10, 10, 200))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    with Image.open(tmp_path / "anim.gif") as anim:
        assert anim.is_animated and anim.n_frames == 3
        anim.seek(2)
        for image in (tmp_path / "anim.gif", anim):
            x = load_image(image)
            assert x.shape == (20, 30, 3) and abs(int(x[..., 0].mean()) - 200) < 8 and x[..., 2].mean() < 20
