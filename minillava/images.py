"""Images -> pixel values: RGB conversion, shortest-edge bicubic resize, center crop, rescale, normalize.

Matches transformers 5's `CLIPImageProcessor` (models/clip/image_processing_clip.py and the backends in
image_processing_backends.py / image_transforms.py) with two backends:
- "pil" (the default) is bit-identical to transformers' PIL backend (`CLIPImageProcessorPil`). It is the
  default because it is what transformers uses when torchvision is absent, it is PIL's resize as in the
  original LLaVA training code, and numpy/PIL give the same numbers on every machine.
- "torch" is bit-identical to transformers' torchvision backend on CPU (`CLIPImageProcessor`, what
  transformers picks when torchvision *is* installed), written with torch alone. The two backends differ
  by 1-2 uint8 levels on a small fraction of the pixels of some photos after a resize (none on others).
`do_pad` means two things in transformers, by the processor class preprocessor_config.json names; here
they have their own names (`image_settings`): `pad_to_square` (a `LlavaImageProcessor`'s `do_pad`: the
original LLaVA's `expand2square` before all of it) and `pad_batch` (a `CLIPImageProcessor`'s `do_pad`: a
batch of differently sized results zero-padded to one size, `pad_images`).
"""
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from .errors import ConfigError, ImageError

BACKENDS = ("pil", "torch")
# OpenAI CLIP's pixel statistics (over its training images), the defaults of CLIPImageProcessor
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
# CLIPImageProcessor's defaults, used for keys a preprocessor_config.json leaves out
IMAGE_DEFAULTS = dict(do_resize=True, size={"shortest_edge": 224}, resample=3,
                      do_center_crop=True, crop_size={"height": 224, "width": 224}, do_rescale=True,
                      rescale_factor=1 / 255, do_normalize=True, image_mean=CLIP_MEAN, image_std=CLIP_STD,
                      do_pad=False, pad_size=None, do_convert_rgb=True)


def check_backend(backend):
    if backend not in BACKENDS:
        raise ConfigError(f"backend {backend!r}, expected one of {BACKENDS}")
    return backend


def pixels_pil(x, c):
    """(H, W, 3) uint8 -> (3, h, w) float32, as PilBackend._preprocess + image_transforms.py."""
    if c["do_resize"]:
        h, w = resize_size(*x.shape[:2], c["size"])
        x = np.array(Image.fromarray(x).resize((w, h), resample=c["resample"], reducing_gap=None))
    x = x.transpose(2, 0, 1)  # (3, H, W)
    if c["do_center_crop"]:
        x = center_crop(x, c["crop_size"], pad_rounds_up=True)
    if c["do_rescale"]:  # float64 product, then float32 (image_transforms.rescale)
        x = (x.astype(np.float64) * c["rescale_factor"]).astype(np.float32)
    if c["do_normalize"]:  # float32 arithmetic (image_transforms.normalize)
        x = x.astype(np.float32)
        mean, std = (np.array(c[k], dtype=np.float32)[:, None, None] for k in ("image_mean", "image_std"))
        x = (x - mean) / std
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))

def pixels_torch(x, c):
    """(H, W, 3) uint8 -> (3, h, w) float32, as TorchvisionBackend._preprocess on CPU."""
    x = torch.from_numpy(x).permute(2, 0, 1).contiguous()  # (3, H, W) uint8
    if c["do_resize"]:
        if c["resample"] != 3:
            raise ConfigError(f"preprocessor_config.json resample {c['resample']}: the torch backend "
                              f"implements bicubic (3) only; use backend='pil'")
        size = resize_size(*x.shape[-2:], c["size"])
        if size != tuple(x.shape[-2:]):  # tvF.resize returns the image itself when the size is unchanged
            # torch's native uint8 kernel: what tvF.resize(..., BICUBIC, antialias=True) runs on CPU
            x = F.interpolate(x[None], size=size, mode="bicubic", align_corners=False, antialias=True)[0]
    if c["do_center_crop"]:
        x = center_crop(x, c["crop_size"], pad_rounds_up=False)
    mean, std = torch.tensor(c["image_mean"])[:, None, None], torch.tensor(c["image_std"])[:, None, None]
    if c["do_rescale"] and c["do_normalize"]:  # fused: mean and std scaled by 1/rescale_factor, in float32
        return (x.float() - mean * (1.0 / c["rescale_factor"])) / (std * (1.0 / c["rescale_factor"]))
    if c["do_normalize"]:
        return (x.float() - mean) / std
    return x * c["rescale_factor"] if c["do_rescale"] else x.float()


def load_image(image, index=0, composite="numpy", convert_rgb=True):
    """A PIL image, a uint8 array or tensor ((H, W, C) or (C, H, W)) or a path -> (H, W, 3) uint8 RGB array;
    ImageError if unreadable. convert_rgb=False (do_convert_rgb: false) takes RGB images only, as transformers
    then cannot normalize other channel counts.

    PIL images: transparency is composited onto white (image_transforms.convert_to_rgb in transformers 5).
    Paths: opened as transformers.image_utils.load_image does: EXIF rotation applied, then .convert("RGB"),
    which drops alpha without compositing but keeps a tRNS transparent colour, then composited as above.
    Arrays with 4 channels are composited onto white with the formula of the backend named by `composite`
    ("numpy" for pil, "torch" for torch). 16-bit grayscale is scaled to 8 bits (see _to_rgb)."""
    where = f"image {index}"
    if torch.is_tensor(image):  # e.g. torchvision.io.read_image: (3, H, W) uint8
        if image.dtype != torch.uint8:
            raise ImageError(f"{where}: tensor of dtype {image.dtype}; expected uint8 (0-255), as read_image "
                             f"gives")
        image = image.detach().cpu().numpy()
    if isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[0] in (1, 3):
        # channels first, decided as transformers' infer_channel_dimension_format does (first axis wins a tie)
        image = image.transpose(1, 2, 0)
    if not convert_rgb:
        _check_rgb(image, where)
    if isinstance(image, (str, Path)):
        where += f" ({image})"
        if str(image).startswith(("http://", "https://")):
            raise ImageError(f"{where}: a URL; minillava reads local files only (download it first)")
        if Path(image).is_dir():
            raise ImageError(f"{where}: a folder; expected an image file")
        if not Path(image).is_file():
            raise ImageError(f"{where}: file not found")
        try:
            with Image.open(image) as img:  # the first frame of an animated file; nothing decoded yet
                limit = Image.MAX_IMAGE_PIXELS  # PIL only warns between 1 and 2 x this limit: refuse at 1 x
                if limit and img.width * img.height > limit:
                    raise ImageError(f"{where}: too many pixels ({img.width}x{img.height} > "
                                     f"PIL.Image.MAX_IMAGE_PIXELS {limit}; a decompression bomb?)")
                # decoded; then composited below, as transformers does
                image = _to_rgb(ImageOps.exif_transpose(img))
        except ImageError:
            raise
        except Image.DecompressionBombError as e:  # PIL's own guard, above 2 x MAX_IMAGE_PIXELS
            raise ImageError(f"{where}: too many pixels ({e})") from None
        except Exception as e:  # PIL raises many types (OSError, SyntaxError, struct.error...) on bad files
            raise ImageError(f"{where}: cannot be read as an image ({type(e).__name__}: {e})") from None
    if isinstance(image, Image.Image):
        where += f" ({image.filename})" if getattr(image, "filename", "") and "(" not in where else ""
        try:
            if getattr(image, "is_animated", False):
                image.seek(0)  # animated GIF / WebP / PNG: the first frame
            if "A" in image.getbands() or image.info.get("transparency") is not None:
                background = Image.new("RGBA", image.size, (255, 255, 255, 255))
                image = Image.alpha_composite(background, image.convert("RGBA"))
            return _check_size(np.array(_to_rgb(image)), where)
        except ImageError:
            raise
        except Exception as e:
            raise ImageError(f"{where}: cannot be decoded ({type(e).__name__}: {e})") from None
    if isinstance(image, np.ndarray):
        _check_size(image, where)
        channels_ok = image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 3, 4))
        if image.dtype != np.uint8 or not channels_ok:
            raise ImageError(f"{where}: array of shape {image.shape} and dtype {image.dtype}; expected "
                             f"(H, W, 3) or (3, H, W) uint8 (or (H, W), (H, W, 1), (1, H, W), (H, W, 4))")
        x = image.reshape(*image.shape[:2], -1)
        if x.shape[2] == 1:
            x = np.repeat(x, 3, axis=2)
        elif x.shape[2] == 4 and composite == "numpy":  # image_transforms.convert_to_rgb, numpy branch
            alpha = x[..., 3:] / 255
            x = np.round(alpha * x[..., :3] + (1 - alpha) * 255).astype(np.uint8)
        elif x.shape[2] == 4:  # TorchvisionBackend.convert_to_rgb: float blend, then tvF.to_dtype's scaling
            t = torch.from_numpy(x).float() * (1.0 / 255)
            t = t[..., :3] * t[..., 3:] + (1 - t[..., 3:])
            x = (t * (255 + 1.0 - 1e-3)).to(torch.uint8).numpy()
        return _check_size(np.ascontiguousarray(x), where)
    raise ImageError(f"{where}: got {type(image).__name__}; expected a PIL.Image, a uint8 numpy array or "
                     f"torch tensor, or a file path")


def _check_rgb(image, where):
    """do_convert_rgb: false. transformers then feeds the channels as they are to a 3-value normalize, which
    fails on anything but RGB ("mean must have 4 elements"); files are always opened as RGB."""
    if isinstance(image, Image.Image) and image.mode != "RGB":
        got = f"a {image.mode} image"
    elif isinstance(image, np.ndarray) and (image.ndim != 3 or image.shape[2] != 3):
        got = f"an array of shape {image.shape}"
    else:
        return
    raise ImageError(f"{where}: {got}, but preprocessor_config.json sets do_convert_rgb: false, so it is not "
                     f"converted to RGB (transformers fails on it too); convert it to RGB first, or set "
                     f"do_convert_rgb: true")


def _to_rgb(image):
    """PIL image -> RGB. 16-bit grayscale (PNG mode I;16) is scaled to 8 bits: PIL's convert("RGB"), which
    transformers uses, clips it at 255 and turns most such images white."""
    if image.mode.startswith("I;16"):
        x = np.asarray(image).astype(np.int64)
        image = Image.fromarray(((x + 128) // 257).astype(np.uint8))  # round(x / 257): 65535 -> 255
    return image.convert("RGB")


def _check_size(x, where):
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ImageError(f"{where}: empty image ({x.shape[1]}x{x.shape[0]} pixels)")
    return x


def expand2square(x, background):
    """(H, W, 3) -> (S, S, 3), S = max(H, W), image centred: the original LLaVA's function of this name
    (LlavaImageProcessor.pad_to_square in transformers)."""
    h, w, _ = x.shape
    if h == w:
        return x
    s = max(h, w)
    out = np.empty((s, s, 3), dtype=np.uint8)
    out[:] = background
    top, left = (s - h) // 2, (s - w) // 2
    out[top:top + h, left:left + w] = x
    return out


def resize_size(height, width, size):
    """Output (h, w) of the resize (image_transforms.get_resize_output_image_size,
    default_to_square=False)."""
    if "shortest_edge" in size and size.get("longest_edge") is None:
        short, long = (width, height) if width <= height else (height, width)
        new_long = int(size["shortest_edge"] * long / short)  # floor, in Python floats, as transformers does
        return (new_long, size["shortest_edge"]) if width <= height else (size["shortest_edge"], new_long)
    if "height" in size and "width" in size:
        return size["height"], size["width"]
    raise ConfigError(f"preprocessor_config.json size {size}: expected {{'shortest_edge': N}} or "
                      f"{{'height', 'width'}}")


def center_crop(x, crop_size, pad_rounds_up):
    """(C, H, W) -> (C, crop_h, crop_w). An image smaller than the crop is zero-padded first; the PIL backend
    puts the odd pixel before the image (image_transforms.center_crop), torchvision after it."""
    ch, cw = crop_size["height"], crop_size["width"]
    h, w = x.shape[-2:]
    if h < ch or w < cw:
        ph, pw = max(ch - h, 0), max(cw - w, 0)
        top, left = ((ph + 1) // 2, (pw + 1) // 2) if pad_rounds_up else (ph // 2, pw // 2)
        shape = (x.shape[0], h + ph, w + pw)
        canvas = x.new_zeros(shape) if torch.is_tensor(x) else np.zeros(shape, x.dtype)
        canvas[:, top:top + h, left:left + w] = x
        x, (h, w) = canvas, canvas.shape[-2:]
    top, left = (h - ch) // 2, (w - cw) // 2
    return x[:, top:top + ch, left:left + cw]


def pad_images(pixels, pad_size=None):
    """[(3, h, w)] float32 -> (N, 3, H, W): zeros below and to the right of each, up to the largest h and w or
    `pad_size` (the `pad` of transformers' image processor backends, run after normalize)."""
    H, W = (pad_size["height"], pad_size["width"]) if pad_size else (max(x.shape[1] for x in pixels),
                                                                     max(x.shape[2] for x in pixels))
    for i, x in enumerate(pixels):
        if x.shape[1] > H or x.shape[2] > W:
            raise ConfigError(f"pad_size {pad_size} is smaller than image {i} after resizing "
                              f"({x.shape[1]}x{x.shape[2]})")
    return torch.stack([F.pad(x, (0, W - x.shape[2], 0, H - x.shape[1])) for x in pixels])


def flat_list(images):
    """One image, a list, or a list of lists (one per prompt) -> a flat list (make_flat_list_of_images)."""
    if not isinstance(images, (list, tuple)):
        return [images]
    return [im for item in images for im in (item if isinstance(item, (list, tuple)) else [item])]


def image_settings(settings, source, pad_to_square=None):
    """preprocessor_config.json's settings (CLIPImageProcessor's defaults for what it leaves out), in the
    forms transformers accepts, -> one checked form: a new dict. Refuses settings that would fail obscurely
    (or silently: a zero std) inside numpy or PIL. `do_pad` becomes `pad_to_square` or `pad_batch` by the
    class (see the module docstring); pad_to_square True or False overrides the file's choice."""
    c = {**IMAGE_DEFAULTS, **settings}
    if type(c["size"]) is int:  # openai's CLIP configs: get_size_dict(size, default_to_square=False)
        c["size"] = {"shortest_edge": c["size"]}
    if type(c["crop_size"]) is int:
        c["crop_size"] = {"height": c["crop_size"], "width": c["crop_size"]}
    for key in ("image_mean", "image_std"):  # a scalar is used for every channel (image_transforms.normalize)
        if type(c[key]) in (int, float):
            c[key] = [c[key]] * 3

    def size(d, keys=("shortest_edge", "height", "width")):
        given = [d[k] for k in keys if d.get(k) is not None] if isinstance(d, dict) else []
        return bool(given) and all(type(n) is int and n > 0 for n in given)

    def numbers(x, n=3):
        return isinstance(x, list) and len(x) == n and all(
            type(v) in (int, float) and math.isfinite(v) for v in x)

    sizes = "{'height': H, 'width': W}, positive integers"
    crop_ok = size(c["crop_size"]) and (not c["do_center_crop"]
                                        or {"height", "width"} <= c["crop_size"].keys())
    for key, ok, expected in [
            ("size", size(c["size"]), "{'shortest_edge': N} or " + sizes),
            ("crop_size", crop_ok, sizes),
            ("image_mean", numbers(c["image_mean"]), "3 numbers"),
            ("image_std", numbers(c["image_std"]) and 0 not in c["image_std"], "3 non-zero numbers"),
            ("rescale_factor", numbers([c["rescale_factor"]], 1) and c["rescale_factor"] > 0,
             "a positive number"),
            ("resample", type(c["resample"]) is int and 0 <= c["resample"] <= 5,
             "a PIL filter number, 0-5 (3 = bicubic)"),
            ("pad_size", c["pad_size"] is None or size(c["pad_size"], ("height", "width"))
             and {"height", "width"} <= c["pad_size"].keys(), "null or " + sizes)]:
        if not ok:
            raise ConfigError(f"{source}: {key} = {c[key]!r}, expected {expected}")
    do_pad = bool(c.pop("do_pad"))
    llava = str(c.get("image_processor_type", "")).startswith("LlavaImageProcessor")
    c["pad_to_square"] = do_pad and llava if pad_to_square is None else bool(pad_to_square)
    c["pad_batch"] = do_pad and not llava
    return c
