"""Prompts and images -> `input_ids`, `attention_mask`, `pixel_values`, exactly as transformers 5.23 makes them.

`Processor.from_pretrained(folder)` reads the processor files of a llava-hf checkpoint and
`processor(text, images)` returns what `AutoProcessor.from_pretrained(folder)(text=..., images=...,
padding=True, return_tensors="pt")` returns (`LlavaProcessor` + `CLIPImageProcessor`), bit for bit:

- text: every `<image>` becomes one `<image>` token per image feature (576 for 336 px / patch 14), as a
  string, then `tokenizer.json` runs verbatim (REFERENCE.md 5.1, 5.3: on a llava folder AutoProcessor
  builds a plain `TokenizersBackend`, so the `legacy` flag of tokenizer_config.json has no effect).
- images: convert to RGB, bicubic resize of the shortest edge, center crop, rescale, normalize
  (REFERENCE.md 4.2 / 4.3) with one of two backends:
  - "pil" (default) is bit-identical to transformers' PIL backend (`CLIPImageProcessorPil`). It is the
    default because it is what transformers uses when torchvision is absent, it is PIL's resize as in the
    original LLaVA training code, and numpy/PIL give the same numbers on every machine.
  - "torch" is bit-identical to transformers' torchvision backend on CPU (`CLIPImageProcessor`, what
    transformers picks when torchvision *is* installed), written with torch alone. The two backends differ
    by 1-2 uint8 levels on under 1% of pixels (REFERENCE.md 4.4).
"""
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from tokenizers import Tokenizer

from .config import LlavaConfig, read_json
from .errors import ConfigError, ImageError, PromptError, TokenizerError

BACKENDS = ("pil", "torch")
# CLIPImageProcessor's defaults, used for keys a preprocessor_config.json leaves out
IMAGE_DEFAULTS = dict(do_resize=True, size={"shortest_edge": 224}, resample=3,
                      do_center_crop=True, crop_size={"height": 224, "width": 224}, do_rescale=True,
                      rescale_factor=1 / 255, do_normalize=True, image_mean=[0.48145466, 0.4578275, 0.40821073],
                      image_std=[0.26862954, 0.26130258, 0.27577711], do_pad=False)


class Processor:
    """Tokenizer + image preprocessing of one llava-hf checkpoint. Build it with `from_pretrained`."""

    def __init__(self, tokenizer, image_config, image_token="<image>", patch_size=14, num_additional_image_tokens=1,
                 vision_feature_select_strategy="default", special_tokens=None, padding_side="left",
                 chat_template=None, backend="pil"):
        if backend not in BACKENDS:
            raise ConfigError(f"backend {backend!r}, expected one of {BACKENDS}")
        self.tokenizer = tokenizer  # a tokenizers.Tokenizer, used verbatim
        self.image_config = {**IMAGE_DEFAULTS, **image_config}  # preprocessor_config.json, HF key names
        self.image_token, self.patch_size = image_token, patch_size
        self.num_additional_image_tokens = num_additional_image_tokens  # 1: the CLS token of CLIP
        self.vision_feature_select_strategy = vision_feature_select_strategy
        self.padding_side, self.chat_template, self.backend = padding_side, chat_template, backend
        special_tokens = special_tokens or {}
        self.bos_token, self.eos_token = special_tokens.get("bos_token"), special_tokens.get("eos_token")
        self.pad_token = special_tokens.get("pad_token")
        self.image_token_id = tokenizer.token_to_id(image_token)
        self.bos_token_id, self.eos_token_id, self.pad_token_id = (
            None if t is None else tokenizer.token_to_id(t) for t in (self.bos_token, self.eos_token, self.pad_token))
        c = self.image_config
        size = c["crop_size"] if c["do_center_crop"] else c["size"]
        self.image_seq_length = self.num_image_tokens(size["height"], size["width"]) if "height" in size else None

    @classmethod
    def from_pretrained(cls, folder, config=None, backend="pil", do_pad=None):
        """Read a llava-hf checkpoint folder. `config`: a LlavaConfig (else config.json is read when present,
        to check the `<image>` id and to fill in what processor_config.json leaves out)."""
        folder = Path(folder)
        if not folder.is_dir():
            raise TokenizerError(f"{folder}: not a folder (expected a llava-hf checkpoint folder with tokenizer.json)")
        if config is None and (folder / "config.json").is_file():
            config = LlavaConfig.from_json(folder / "config.json")
        proc = _read_json(folder / "processor_config.json") or {}
        # Image settings: preprocessor_config.json on the hub, processor_config.json["image_processor"] in 5.x saves
        image_config = _read_json(folder / "preprocessor_config.json") or proc.get("image_processor")
        if not isinstance(image_config, dict):
            raise ConfigError(f"{folder}: neither preprocessor_config.json nor processor_config.json['image_processor'] "
                              f"found (a llava-hf checkpoint has preprocessor_config.json)")
        source = folder / ("preprocessor_config.json" if (folder / "preprocessor_config.json").is_file() else
                           "processor_config.json")
        _check_image_config({**IMAGE_DEFAULTS, **image_config}, source)
        if not str(image_config.get("image_processor_type", "")).startswith("LlavaImageProcessor"):
            image_config.pop("do_pad", None)  # CLIPImageProcessor's do_pad is a no-op batch pad, not expand2square
        if do_pad is not None:
            image_config["do_pad"] = do_pad

        # processor_config.json is missing from older snapshots: then the model config decides (REFERENCE.md 1.4)
        missing = [k for k in ("patch_size", "vision_feature_select_strategy") if proc.get(k) is None]
        if missing and config is None:
            raise ConfigError(f"{folder}: processor_config.json does not give {', '.join(missing)} and there is no "
                              f"config.json to take it from")
        patch_size = proc.get("patch_size") or config.vision_config.patch_size
        strategy = proc.get("vision_feature_select_strategy") or config.vision_feature_select_strategy
        # transformers would use 0 here and produce one token too few per image; CLIP always adds its CLS token
        extra = proc.get("num_additional_image_tokens", 1)
        image_token = proc.get("image_token", "<image>")
        for key, value, ok in [("patch_size", patch_size, type(patch_size) is int and patch_size > 0),
                               ("vision_feature_select_strategy", strategy, strategy in ("default", "full")),
                               ("num_additional_image_tokens", extra, type(extra) is int and extra >= 0),
                               ("image_token", image_token, isinstance(image_token, str))]:
            if not ok:
                raise ConfigError(f"{folder / 'processor_config.json'}: {key} = {value!r} is not a valid value")
        if config is not None and (patch_size, strategy) != (config.vision_config.patch_size,
                                                             config.vision_feature_select_strategy):
            raise TokenizerError(f"{folder / 'processor_config.json'}: patch_size {patch_size} and strategy {strategy!r} "
                                 f"disagree with the model config's {config.vision_config.patch_size} and "
                                 f"{config.vision_feature_select_strategy!r}")

        tokenizer, special, tok_config = _load_tokenizer(folder)
        image_id = tokenizer.token_to_id(image_token)
        if image_id is None:
            raise TokenizerError(f"{folder / 'tokenizer.json'}: has no {image_token!r} token (llava-hf adds it as id 32000)")
        if config is not None and image_id != config.image_token_index:
            raise TokenizerError(f"{folder / 'tokenizer.json'}: {image_token!r} is id {image_id} but the model config's "
                                 f"image_token_index is {config.image_token_index}")
        if config is not None and tokenizer.get_vocab_size() > config.text_config.vocab_size:
            raise TokenizerError(f"{folder / 'tokenizer.json'}: {tokenizer.get_vocab_size()} tokens, more than the "
                                 f"model's vocabulary (text_config.vocab_size {config.text_config.vocab_size}): "
                                 f"another model's tokenizer?")
        return cls(tokenizer, image_config, image_token=image_token, patch_size=patch_size,
                   num_additional_image_tokens=extra, vision_feature_select_strategy=strategy, special_tokens=special,
                   # left when unset (transformers would pad right): generation needs the prompts' ends aligned
                   padding_side=tok_config.get("padding_side", "left"),
                   chat_template=_read_chat_template(folder, tok_config), backend=backend)

    # ---- text -------------------------------------------------------------------------------------------

    def num_image_tokens(self, height, width):
        """Image tokens for one image of `pixel_values` size height x width (LlavaProcessor.replace_image_token)."""
        n = (height // self.patch_size) * (width // self.patch_size) + self.num_additional_image_tokens
        return n - 1 if self.vision_feature_select_strategy == "default" else n  # "default" drops CLS

    def __call__(self, text=None, images=None, padding=True, backend=None):
        """text: a prompt or a list of prompts, each `<image>` marking where an image goes. images: one image or a
        list (PIL.Image, (H, W, 3) uint8 array or a path), consumed in text order across the batch.
        Returns {"input_ids": (B, T) long, "attention_mask": (B, T) long, "pixel_values": (N, 3, H, W) float32}."""
        texts = [text] if isinstance(text, str) else text
        images = [] if images is None else _flat_list(images)
        out = {}
        if images:
            out["pixel_values"] = self.preprocess(images, backend=backend)  # (N, 3, H, W)
        if texts is None:
            return out
        if not isinstance(texts, (list, tuple)) or not texts or not all(isinstance(t, str) for t in texts):
            raise PromptError(f"text must be a string or a non-empty list of strings, got {text!r:.80}")
        n_markers = sum(t.count(self.image_token) for t in texts)
        if n_markers != len(images):
            raise PromptError(f"the text has {n_markers} {self.image_token} marker(s) but {len(images)} image(s) "
                              f"were given; each image needs one marker where it goes")
        if images:  # each marker becomes n image tokens, as a string, before tokenizing (replace_image_token)
            n = self.num_image_tokens(*out["pixel_values"].shape[-2:])
            texts = [t.replace(self.image_token, self.image_token * n) for t in texts]
        ids = [e.ids for e in self.tokenizer.encode_batch(list(texts))]  # the post-processor adds BOS
        return {**self._pad(ids, padding), **out}

    def _pad(self, ids, padding):
        longest = max(len(x) for x in ids)
        if any(len(x) != longest for x in ids):
            if not padding:
                raise PromptError(f"prompts tokenize to {[len(x) for x in ids]} tokens; pass padding=True to pad them")
            if self.pad_token_id is None:
                raise TokenizerError("cannot pad the batch: the tokenizer has no pad_token (tokenizer_config.json)")
        input_ids = torch.full((len(ids), longest), self.pad_token_id or 0, dtype=torch.long)
        attention_mask = torch.zeros((len(ids), longest), dtype=torch.long)
        for i, x in enumerate(ids):  # left padding keeps every prompt's last token in the last column
            cols = slice(longest - len(x), longest) if self.padding_side == "left" else slice(0, len(x))
            input_ids[i, cols] = torch.tensor(x, dtype=torch.long)
            attention_mask[i, cols] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def decode(self, ids, skip_special_tokens=False):
        """Token ids -> text, with tokenizer.json's decoder (byte-fallback bytes are joined into characters)."""
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else ids
        return self.tokenizer.decode([ids] if isinstance(ids, int) else list(ids), skip_special_tokens=skip_special_tokens)

    def batch_decode(self, batch, skip_special_tokens=False):
        return [self.decode(ids, skip_special_tokens) for ids in batch]

    def apply_chat_template(self, conversation, add_generation_prompt=False):
        """The llava-1.5 chat template rendered in plain Python by minillava.chat (no jinja at runtime); equal to
        transformers' rendering of llava-hf's chat_template.json (tests/test_chat.py). `self.chat_template` keeps
        the folder's template text for reference."""
        from .chat import format_conversation  # imported here: chat.py imports this module
        return format_conversation(conversation, add_generation_prompt=add_generation_prompt, style="llava")

    # ---- images -----------------------------------------------------------------------------------------

    def preprocess(self, images, backend=None):
        """images -> pixel_values (N, 3, crop_h, crop_w) float32."""
        backend = backend or self.backend
        if backend not in BACKENDS:
            raise ConfigError(f"backend {backend!r}, expected one of {BACKENDS}")
        c = self.image_config
        pixels = []
        for i, image in enumerate(_flat_list(images)):
            x = load_image(image, i, composite="numpy" if backend == "pil" else "torch")  # (H, W, 3) uint8
            if c["do_pad"]:  # original LLaVA's expand2square, background = the mean colour
                x = pad_to_square(x, tuple(int(m * 255) for m in c["image_mean"]))
            pixels.append(self._pixels_pil(x) if backend == "pil" else self._pixels_torch(x))
        return torch.stack(pixels)

    def _pixels_pil(self, x):
        """(H, W, 3) uint8 -> (3, h, w) float32, as PilBackend._preprocess + image_transforms.py."""
        c = self.image_config
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

    def _pixels_torch(self, x):
        """(H, W, 3) uint8 -> (3, h, w) float32, as TorchvisionBackend._preprocess on CPU."""
        c = self.image_config
        x = torch.from_numpy(x).permute(2, 0, 1).contiguous()  # (3, H, W) uint8
        if c["do_resize"]:
            if c["resample"] != 3:
                raise ConfigError(f"preprocessor_config.json resample {c['resample']}: the torch backend implements "
                                  f"bicubic (3) only; use backend='pil'")
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


# ---- image helpers ---------------------------------------------------------------------------------------

def load_image(image, index=0, composite="numpy"):
    """A PIL image, an (H, W, C) uint8 array or a path -> (H, W, 3) uint8 RGB array; ImageError if unreadable.

    PIL images: transparency is composited onto white (image_transforms.convert_to_rgb in transformers 5).
    Paths: opened as transformers.image_utils.load_image does: EXIF rotation applied, then .convert("RGB"),
    which drops alpha without compositing but keeps a tRNS transparent colour, then composited as above.
    Arrays with 4 channels are composited onto white with the formula of the backend named by `composite`
    ("numpy" for pil, "torch" for torch). 16-bit grayscale is scaled to 8 bits (see _to_rgb)."""
    where = f"image {index}"
    if isinstance(image, (str, Path)):
        where += f" ({image})"
        if not Path(image).is_file():
            raise ImageError(f"{where}: file not found")
        try:
            with Image.open(image) as img:  # the first frame of an animated file; nothing decoded yet
                limit = Image.MAX_IMAGE_PIXELS  # PIL only warns between 1 and 2 x this limit: refuse at 1 x
                if limit and img.width * img.height > limit:
                    raise ImageError(f"{where}: too many pixels ({img.width}x{img.height} > PIL.Image.MAX_IMAGE_PIXELS "
                                     f"{limit}; a decompression bomb?)")
                image = _to_rgb(ImageOps.exif_transpose(img))  # decoded; then composited below, as transformers does
        except ImageError:
            raise
        except Image.DecompressionBombError as e:  # PIL's own guard, above 2 x MAX_IMAGE_PIXELS
            raise ImageError(f"{where}: too many pixels ({e})") from None
        except Exception as e:  # PIL raises many types (OSError, SyntaxError, struct.error...) on broken files
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
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
            raise ImageError(f"{where}: array of shape {image.shape} and dtype {image.dtype}; expected (H, W, 3) uint8 "
                             f"(or (H, W), (H, W, 1), (H, W, 4))")
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
    raise ImageError(f"{where}: got {type(image).__name__}; expected a PIL.Image, a numpy uint8 array or a file path")


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


def pad_to_square(x, background):
    """(H, W, 3) -> (S, S, 3), S = max(H, W), image centred (LLaVA's expand2square, LlavaImageProcessor.pad_to_square)."""
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
    """Output (h, w) of the resize (image_transforms.get_resize_output_image_size, default_to_square=False)."""
    if "shortest_edge" in size and size.get("longest_edge") is None:
        short, long = (width, height) if width <= height else (height, width)
        new_long = int(size["shortest_edge"] * long / short)  # floor, in Python floats, as transformers does
        return (new_long, size["shortest_edge"]) if width <= height else (size["shortest_edge"], new_long)
    if "height" in size and "width" in size:
        return size["height"], size["width"]
    raise ConfigError(f"preprocessor_config.json size {size}: expected {{'shortest_edge': N}} or {{'height', 'width'}}")


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


def _flat_list(images):
    """One image, a list, or a list of lists (one per prompt) -> a flat list (make_flat_list_of_images)."""
    if not isinstance(images, (list, tuple)):
        return [images]
    return [im for item in images for im in (item if isinstance(item, (list, tuple)) else [item])]


# ---- files -----------------------------------------------------------------------------------------------

def _read_json(path):
    """A JSON object from `path`; None when the file does not exist, ConfigError when it is unreadable."""
    return read_json(path) if path.is_file() else None


def _check_image_config(c, path):
    """Refuse image settings that would fail obscurely (or silently: a zero std) inside numpy or PIL."""
    def size(d):
        given = [d[k] for k in ("shortest_edge", "height", "width") if d.get(k) is not None] if isinstance(d, dict) else []
        return bool(given) and all(type(n) is int and n > 0 for n in given)

    def numbers(x, n=3):
        return isinstance(x, list) and len(x) == n and all(type(v) in (int, float) and math.isfinite(v) for v in x)
    for key, ok, expected in [
            ("size", size(c["size"]), "{'shortest_edge': N} or {'height': H, 'width': W}, positive integers"),
            ("crop_size", size(c["crop_size"]) and (not c["do_center_crop"] or {"height", "width"} <= c["crop_size"].keys()),
             "{'height': H, 'width': W}, positive integers"),
            ("image_mean", numbers(c["image_mean"]), "3 numbers"),
            ("image_std", numbers(c["image_std"]) and 0 not in c["image_std"], "3 non-zero numbers"),
            ("rescale_factor", numbers([c["rescale_factor"]], 1) and c["rescale_factor"] > 0, "a positive number"),
            ("resample", type(c["resample"]) is int and 0 <= c["resample"] <= 5, "a PIL filter number, 0-5 (3 = bicubic)")]:
        if not ok:
            raise ConfigError(f"{path}: {key} = {c[key]!r}, expected {expected}")


def _load_tokenizer(folder):
    """tokenizer.json verbatim (its normalizer, pre-tokenizer and BOS-adding post-processor), and the names of the
    special tokens from tokenizer_config.json / special_tokens_map.json. Measured in 5.23 on a llava folder: the
    `legacy`, `add_bos_token` and `add_eos_token` flags of tokenizer_config.json change nothing."""
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise TokenizerError(f"{path}: file not found (minillava reads the fast tokenizer, tokenizer.json)")
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception on malformed files
        raise TokenizerError(f"{path}: not a valid tokenizer.json ({e})") from None
    tokenizer.no_padding()  # padding and truncation are done here, not by settings stored in the file
    tokenizer.no_truncation()
    tok_config = _read_json(folder / "tokenizer_config.json") or {}
    names = ("bos_token", "eos_token", "pad_token", "unk_token")
    special = {k: tok_config.get(k) for k in names}
    if "added_tokens_decoder" not in tok_config:  # older folders: special_tokens_map.json wins (5.23 legacy path)
        special.update({k: v for k, v in (_read_json(folder / "special_tokens_map.json") or {}).items() if k in names})
    special = {k: v.get("content") if isinstance(v, dict) else v for k, v in special.items()}
    for k, v in special.items():
        if v is not None and not isinstance(v, str):
            raise TokenizerError(f"{folder / 'tokenizer_config.json'}: {k} = {v!r}, expected a token string")
    return tokenizer, special, tok_config


def _read_chat_template(folder, tok_config):
    """chat_template.jinja, then chat_template.json, then tokenizer_config.json (the order of transformers 5)."""
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text(encoding="utf-8")
    template = (_read_json(folder / "chat_template.json") or {}).get("chat_template")
    return template if template is not None else tok_config.get("chat_template")
