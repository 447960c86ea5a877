"""Prompts and images -> `input_ids`, `attention_mask`, `pixel_values`, exactly as transformers 5 makes them.

`Processor.from_pretrained(folder)` reads the processor files of a llava-hf checkpoint and
`processor(text, images)` returns what `AutoProcessor.from_pretrained(folder)(text=..., images=...,
padding=True, return_tensors="pt")` returns (`LlavaProcessor` + `CLIPImageProcessor`), bit for bit:

- text: every `<image>` becomes one `<image>` token per image feature (576 for 336 px / patch 14), as a
  string (models/llava/processing_llava.py, `LlavaProcessor.__call__`), then `tokenizer.json` runs verbatim:
  on a llava folder with its config.json AutoProcessor builds a plain `TokenizersBackend`
  (tokenization_utils_tokenizers.py), so the `legacy` flag of tokenizer_config.json has no effect.
- images: convert to RGB, bicubic resize of the shortest edge, center crop, rescale, normalize, with the
  "pil" (default) or "torch" backend of minillava/images.py.
"""
from pathlib import Path

import torch
from tokenizers import Tokenizer

from .config import LlavaConfig, read_json
from .errors import ConfigError, ImageError, PromptError, TokenizerError
from .images import (
    BACKENDS,
    IMAGE_DEFAULTS,
    check_image_config,
    flat_list,
    load_image,
    pad_batch,
    pad_to_square,
    pixels_pil,
    pixels_torch,
)
from .template import is_batch, render
from .training import chat_inputs


class Processor:
    """Tokenizer + image preprocessing of one llava-hf checkpoint. Build it with `from_pretrained`."""

    def __init__(self, tokenizer, image_config, image_token="<image>", patch_size=14, num_additional_image_tokens=1,
                 vision_feature_select_strategy="default", special_tokens=None, padding_side="left",
                 chat_template=None, backend="pil", pad_batch=False):
        if backend not in BACKENDS:
            raise ConfigError(f"backend {backend!r}, expected one of {BACKENDS}")
        self.tokenizer = tokenizer  # a tokenizers.Tokenizer, used verbatim
        # preprocessor_config.json, HF key names; do_pad is LlavaImageProcessor's pad-to-square
        self.image_config = check_image_config({**IMAGE_DEFAULTS, **image_config}, "image_config")
        self.pad_batch = pad_batch  # CLIPImageProcessor's do_pad: pad differently sized images to the largest
        self.image_token, self.patch_size = image_token, patch_size
        self.num_additional_image_tokens = num_additional_image_tokens  # 1: the CLS token of CLIP
        self.vision_feature_select_strategy = vision_feature_select_strategy
        self.padding_side, self.chat_template, self.backend = padding_side, chat_template, backend
        special_tokens = special_tokens or {}
        self.bos_token, self.eos_token = special_tokens.get("bos_token"), special_tokens.get("eos_token")
        self.pad_token, self.unk_token = special_tokens.get("pad_token"), special_tokens.get("unk_token")
        self.image_token_id = tokenizer.token_to_id(image_token)
        self.bos_token_id, self.eos_token_id, self.pad_token_id = (
            None if t is None else tokenizer.token_to_id(t) for t in (self.bos_token, self.eos_token, self.pad_token))
        c = self.image_config
        size = c["crop_size"] if c["do_center_crop"] else c["size"]
        self.image_seq_length = self.num_image_tokens(size["height"], size["width"]) if "height" in size else None

    @classmethod
    def from_pretrained(cls, folder, config=None, backend="pil", do_pad=None):
        """Read a llava-hf checkpoint folder. `config`: a LlavaConfig (else the folder's config.json is read), to
        check the `<image>` id and to fill in what processor_config.json leaves out."""
        folder = Path(folder)
        if not folder.is_dir():
            raise TokenizerError(f"{folder}: not a folder (expected a llava-hf checkpoint folder with tokenizer.json)")
        if config is None and not (folder / "config.json").is_file():
            # transformers then builds the tokenizer from tokenizer_config.json's class (LlamaTokenizer rebuilds the
            # pre-tokenizer: " <image> upper" -> [1, 29871, 32000, 7568] instead of tokenizer.json's [1, 259, 32000,
            # 29871, 7568]), which is not how a llava checkpoint is tokenized
            raise TokenizerError(f"{folder}: no config.json; without it transformers builds another tokenizer (a "
                                 f"LlamaTokenizer rebuilt from tokenizer_config.json) whose ids differ: copy the "
                                 f"checkpoint's config.json into the folder")
        if config is None:
            config = LlavaConfig.from_json(folder / "config.json")
        proc = _read_json(folder / "processor_config.json") or {}
        # Image settings: preprocessor_config.json on the hub, processor_config.json["image_processor"] in 5.x saves
        image_config = _read_json(folder / "preprocessor_config.json") or proc.get("image_processor")
        if not isinstance(image_config, dict):
            raise ConfigError(f"{folder}: neither preprocessor_config.json nor processor_config.json['image_processor'] "
                              f"found (a llava-hf checkpoint has preprocessor_config.json)")
        source = folder / ("preprocessor_config.json" if (folder / "preprocessor_config.json").is_file() else
                           "processor_config.json")
        image_config = check_image_config({**IMAGE_DEFAULTS, **image_config}, source)
        batch_pad = False
        if not str(image_config.get("image_processor_type", "")).startswith("LlavaImageProcessor"):
            batch_pad = bool(image_config.pop("do_pad", False))  # CLIPImageProcessor's do_pad pads the batch
        if do_pad is not None:
            image_config["do_pad"] = do_pad

        # processor_config.json is missing from older snapshots: then the model config decides
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
                   chat_template=_read_chat_template(folder, tok_config), backend=backend, pad_batch=batch_pad)

    # ---- text -------------------------------------------------------------------------------------------

    def num_image_tokens(self, height, width):
        """Image tokens for one image of `pixel_values` size height x width (LlavaProcessor.replace_image_token)."""
        n = (height // self.patch_size) * (width // self.patch_size) + self.num_additional_image_tokens
        return n - 1 if self.vision_feature_select_strategy == "default" else n  # "default" drops CLS

    def __call__(self, text=None, images=None, padding=True, backend=None):
        """text: a prompt or a list of prompts, each `<image>` marking where an image goes. images: one image or a
        list (PIL.Image, (H, W, 3) uint8 array or a path), consumed in text order across the batch.
        Returns {"input_ids": (B, T) long, "attention_mask": (B, T) long, "pixel_values": (N, 3, H, W) float32}."""
        if text is None and images is None:  # as LlavaProcessor
            raise PromptError("You need to provide at least one input to call the processor: text, images or both")
        texts = [text] if isinstance(text, str) else text
        images = [] if images is None else flat_list(images)
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

    def apply_chat_template(self, conversation, add_generation_prompt=False, chat_template=None, tokenize=False,
                            return_dict=False, return_assistant_tokens_mask=False, **kwargs):
        """The folder's chat template (or `chat_template`, a template text) rendered as transformers'
        apply_chat_template renders it (minillava/template.py). A list of conversations gives a list of prompts.
        minillava.chat.format_conversation is the same llava-1.5 format in plain Python, to read.
        tokenize=True: the ids (return_dict: a dict with the masks, pixel values and assistant_masks) that
        transformers returns with return_tensors="pt" (minillava/training.py, chat_inputs)."""
        template = chat_template or self.chat_template
        if not isinstance(template, str):
            raise PromptError("this processor has no chat template (no chat_template.jinja, chat_template.json or "
                              "'chat_template' in tokenizer_config.json): pass chat_template=, e.g. "
                              "minillava.chat.LLAVA_CHAT_TEMPLATE for llava-1.5's format, or write the prompt yourself")
        if tokenize:
            return chat_inputs(self, template, conversation, add_generation_prompt, return_dict,
                               return_assistant_tokens_mask, **kwargs)
        special = {"bos_token": self.bos_token, "eos_token": self.eos_token, "unk_token": self.unk_token,
                   "pad_token": self.pad_token}
        if is_batch(conversation):
            return [render(template, c, add_generation_prompt, special, **kwargs) for c in conversation]
        return render(template, conversation, add_generation_prompt, special, **kwargs)

    # ---- images -----------------------------------------------------------------------------------------

    def preprocess(self, images, backend=None):
        """images -> pixel_values (N, 3, crop_h, crop_w) float32."""
        backend = backend or self.backend
        if backend not in BACKENDS:
            raise ConfigError(f"backend {backend!r}, expected one of {BACKENDS}")
        c = self.image_config
        pixels = []
        for i, image in enumerate(flat_list(images)):
            # (H, W, 3) uint8
            x = load_image(image, i, composite="numpy" if backend == "pil" else "torch", convert_rgb=c["do_convert_rgb"])
            if c["do_pad"]:  # original LLaVA's expand2square, background = the mean colour
                x = pad_to_square(x, tuple(int(m * 255) for m in c["image_mean"]))
            pixels.append(pixels_pil(x, c) if backend == "pil" else pixels_torch(x, c))
        if self.pad_batch:
            return pad_batch(pixels, c.get("pad_size"))
        if len({tuple(x.shape) for x in pixels}) > 1:
            raise ImageError(f"the images come out in different sizes ({', '.join(str(tuple(x.shape[1:])) for x in pixels)}) "
                             f"and cannot form one batch: preprocessor_config.json has do_center_crop false and no "
                             f"do_pad (transformers fails too); give images of one shape, or set do_center_crop: true")
        return torch.stack(pixels)

# ---- files -----------------------------------------------------------------------------------------------

def _read_json(path):
    """A JSON object from `path`; None when the file does not exist, ConfigError when it is unreadable."""
    return read_json(path) if path.is_file() else None


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
