"""Prompts and images -> `input_ids`, `attention_mask`, `pixel_values`, exactly as transformers 5 makes them.

`Processor.from_pretrained(folder)` reads the processor files of a llava-hf checkpoint and
`processor(text, images)` returns what `AutoProcessor.from_pretrained(folder)(text=..., images=...,
padding=True, return_tensors="pt")` returns (`LlavaProcessor` + `CLIPImageProcessor`), bit for bit:

- text: every `<image>` becomes one `<image>` token per image feature (576 for 336 px / patch 14), as a
  string (models/llava/processing_llava.py, `LlavaProcessor.__call__`), then the tokenizer transformers
  builds for the folder runs (minillava/tokenizer.py: beside a config.json, tokenizer.json as it is).
- images: convert to RGB, bicubic resize of the shortest edge, center crop, rescale, normalize, with the
  "pil" (default) or "torch" backend of minillava/images.py.

A folder with the processor files alone (what transformers' `processor.save_pretrained()` writes: no
config.json) is read as transformers reads it: the tokenizer it builds then, and the patch size, feature
selection strategy and image token from processor_config.json.
"""
from pathlib import Path

import torch

from .config import LlavaConfig, read_json
from .errors import ConfigError, ImageError, PromptError, TokenizerError
from .images import (
    check_backend,
    expand2square,
    flat_list,
    image_settings,
    load_image,
    pad_images,
    pixels_pil,
    pixels_torch,
)
from .template import is_batch, render
from .tokenizer import load_tokenizer
from .training import chat_inputs


class Processor:
    """Tokenizer + image preprocessing of one llava-hf checkpoint. Build it with `from_pretrained`."""

    def __init__(self, tokenizer, image_config, patch_size=14, vision_feature_select_strategy="default",
                 num_additional_image_tokens=1, image_token="<image>", special_tokens=None,
                 padding_side="left", chat_template=None, backend="pil", folder=None):
        self.tokenizer = tokenizer  # a tokenizers.Tokenizer (minillava/tokenizer.py)
        self.image_config = image_config  # preprocessor_config.json, checked: images.image_settings
        self.patch_size = patch_size
        self.vision_feature_select_strategy = vision_feature_select_strategy
        self.num_additional_image_tokens = num_additional_image_tokens  # 1: the CLS token of CLIP
        self.image_token, self.image_token_id = image_token, tokenizer.token_to_id(image_token)
        # {"bos_token": "<s>", "eos_token": "</s>", "unk_token": ..., "pad_token": ...}; None where unset
        self.special_tokens = dict(special_tokens or {})
        token_id = {k: tokenizer.token_to_id(v) for k, v in self.special_tokens.items() if v is not None}
        self.bos_token_id = token_id.get("bos_token")
        self.eos_token_id = token_id.get("eos_token")
        self.pad_token_id = token_id.get("pad_token")
        self.padding_side, self.chat_template = padding_side, chat_template
        self.backend = check_backend(backend)
        self.folder = folder  # where it was read from, named in errors

    @classmethod
    def from_pretrained(cls, folder, config=None, backend="pil", pad_to_square=None):
        """Read a llava-hf checkpoint folder. config: a LlavaConfig (else the folder's config.json, where it
        has one), to check the files against and to fill in what processor_config.json leaves out; with one,
        tokenizer.json is used as it is (as AutoTokenizer does given a llava config), without either the
        folder is read as processor files alone (minillava/tokenizer.py). pad_to_square: True or False
        overrides the folder's choice (a LlavaImageProcessor's `do_pad`)."""
        folder = Path(folder)
        if not folder.is_dir():
            raise TokenizerError(f"{folder}: not a folder (expected a llava-hf checkpoint folder with "
                                 f"tokenizer.json)")
        if config is None and (folder / "config.json").is_file():
            config = LlavaConfig.from_json(folder / "config.json")
        tokenizer, special, tok_config = load_tokenizer(folder, model_known=config is not None)
        proc = _read_json(folder / "processor_config.json") or {}
        image_config, source = _image_config(folder, proc)
        processor = cls(tokenizer, image_settings(image_config, source, pad_to_square),
                        **_image_tokens(folder, proc, config), special_tokens=special,
                        # left when unset (transformers pads a TokenizersBackend on the right): generation
                        # needs the prompts' ends aligned
                        padding_side=tok_config.get("padding_side", "left"),
                        chat_template=_read_chat_template(folder, tok_config), backend=backend,
                        folder=folder)
        if processor.image_token_id is None:
            raise TokenizerError(f"{folder / 'tokenizer.json'}: has no {processor.image_token!r} token "
                                 f"(llava-hf adds it as id 32000)")
        if config is not None:
            _check_against(processor, config, folder)
        return processor

    # ---- text -------------------------------------------------------------------------------------------

    def num_image_tokens(self, height, width):
        """Image tokens for one image of `pixel_values` size height x width
        (LlavaProcessor.replace_image_token)."""
        n = (height // self.patch_size) * (width // self.patch_size) + self.num_additional_image_tokens
        return n - 1 if self.vision_feature_select_strategy == "default" else n  # "default" drops CLS

    def __call__(self, text=None, images=None, padding=True, backend=None):
        """text: a prompt or a list of prompts, each `<image>` marking where an image goes. images: one image
        or a list (PIL.Image, (H, W, 3) uint8 array or a path), consumed in text order across the batch.
        Returns {"input_ids": (B, T) long, "attention_mask": (B, T) long,
        "pixel_values": (N, 3, H, W) float32}."""
        if text is None and images is None:  # as LlavaProcessor
            raise PromptError("You need to provide at least one input to call the processor: text, images or "
                              "both")
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
            raise PromptError(f"the text has {n_markers} {self.image_token} marker(s) but {len(images)} "
                              f"image(s) were given; each image needs one marker where it goes")
        image_size = out["pixel_values"].shape[-2:] if images else None
        return {**self.tokenize(texts, image_size, padding), **out}

    def tokenize(self, texts, image_size=None, padding=True):
        """Prompts -> {"input_ids", "attention_mask"}, each `<image>` marker standing for one image whose
        pixel_values are image_size (height, width). A chat session calls it with the images it already has."""
        if image_size is not None:  # each marker becomes n image tokens, as a string, before tokenizing
            n = self.num_image_tokens(*image_size)  # (LlavaProcessor.replace_image_token)
            texts = [t.replace(self.image_token, self.image_token * n) for t in texts]
        ids = [e.ids for e in self.tokenizer.encode_batch(list(texts))]  # the post-processor adds BOS
        return self._pad(ids, padding)

    def _pad(self, ids, padding):
        longest = max(len(x) for x in ids)
        if any(len(x) != longest for x in ids):
            if not padding:
                raise PromptError(f"prompts tokenize to {[len(x) for x in ids]} tokens; pass padding=True to "
                                  f"pad them")
            if self.pad_token_id is None:
                raise TokenizerError("cannot pad the batch: the tokenizer has no pad_token "
                                     "(tokenizer_config.json)")
        input_ids = torch.full((len(ids), longest), self.pad_token_id or 0, dtype=torch.long)
        attention_mask = torch.zeros((len(ids), longest), dtype=torch.long)
        for i, x in enumerate(ids):  # left padding keeps every prompt's last token in the last column
            cols = slice(longest - len(x), longest) if self.padding_side == "left" else slice(0, len(x))
            input_ids[i, cols] = torch.tensor(x, dtype=torch.long)
            attention_mask[i, cols] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def decode(self, ids, skip_special_tokens=False):
        """Token ids -> text with the tokenizer's decoder (byte-fallback bytes are joined into characters)."""
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else ids
        ids = [ids] if isinstance(ids, int) else list(ids)
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def batch_decode(self, batch, skip_special_tokens=False):
        return [self.decode(ids, skip_special_tokens) for ids in batch]

    def apply_chat_template(self, conversation, add_generation_prompt=False, chat_template=None,
                            tokenize=False, return_dict=False, return_assistant_tokens_mask=False, **kwargs):
        """The folder's chat template (or `chat_template`, a template text) rendered as transformers'
        apply_chat_template renders it (minillava/template.py). A list of conversations gives a list of
        prompts. minillava.chat.format_conversation is the same llava-1.5 format in plain Python, to read.
        tokenize=True: the ids (return_dict: a dict with the masks, pixel values and assistant_masks) that
        transformers returns with return_tensors="pt" (minillava/training.py, chat_inputs)."""
        template = chat_template or self.chat_template
        if not isinstance(template, str):
            raise PromptError("this processor has no chat template (no chat_template.jinja, "
                              "chat_template.json or 'chat_template' in tokenizer_config.json): pass "
                              "chat_template=, e.g. minillava.chat.LLAVA_CHAT_TEMPLATE for llava-1.5's "
                              "format, or write the prompt yourself")
        origin = ("the chat template passed as chat_template=" if chat_template else
                  f"the chat template of {self.folder}" if self.folder else "the chat template")
        if tokenize:
            return chat_inputs(self, template, conversation, add_generation_prompt, return_dict,
                               return_assistant_tokens_mask, origin=origin, **kwargs)
        special = self.special_tokens
        if is_batch(conversation):
            return [render(template, c, add_generation_prompt, special, origin=origin, **kwargs)
                    for c in conversation]
        return render(template, conversation, add_generation_prompt, special, origin=origin, **kwargs)

    # ---- images -----------------------------------------------------------------------------------------

    def preprocess(self, images, backend=None, pad_to_square=None):
        """images -> pixel_values (N, 3, crop_h, crop_w) float32. pad_to_square: True or False overrides the
        folder's choice for this call (LLaVA-1.5 trained with it on; llava-hf's processor has it off)."""
        backend = self.backend if backend is None else check_backend(backend)
        c = self.image_config
        square = c["pad_to_square"] if pad_to_square is None else pad_to_square
        pixels = []
        for i, image in enumerate(flat_list(images)):
            x = load_image(image, i, composite="numpy" if backend == "pil" else "torch",
                           convert_rgb=c["do_convert_rgb"])  # (H, W, 3) uint8
            if square:  # the original LLaVA's expand2square, background = the mean colour
                x = expand2square(x, tuple(int(m * 255) for m in c["image_mean"]))
            pixels.append(pixels_pil(x, c) if backend == "pil" else pixels_torch(x, c))
        if c["pad_batch"]:
            return pad_images(pixels, c["pad_size"])
        if len({tuple(x.shape) for x in pixels}) > 1:
            sizes = ", ".join(str(tuple(x.shape[1:])) for x in pixels)
            raise ImageError(f"the images come out in different sizes ({sizes}) and cannot form one batch: "
                             f"preprocessor_config.json has do_center_crop false and no do_pad (transformers "
                             f"fails too); give images of one shape, or set do_center_crop: true")
        return torch.stack(pixels)

# ---- files -----------------------------------------------------------------------------------------------

def _read_json(path):
    """A JSON object from `path`; None when the file does not exist, ConfigError when it is unreadable."""
    return read_json(path) if path.is_file() else None


def _image_config(folder, proc):
    """(the image settings, the file they are in): preprocessor_config.json on the hub,
    processor_config.json["image_processor"] where transformers 5 saved the processor."""
    if (folder / "preprocessor_config.json").is_file():
        return read_json(folder / "preprocessor_config.json"), folder / "preprocessor_config.json"
    if isinstance(proc.get("image_processor"), dict):
        return proc["image_processor"], folder / "processor_config.json"
    raise ConfigError(f"{folder}: neither preprocessor_config.json nor "
                      f"processor_config.json['image_processor'] found (a llava-hf checkpoint has "
                      f"preprocessor_config.json)")


def _image_tokens(folder, proc, config):
    """What LlavaProcessor counts the `<image>` tokens of an image with: patch_size, the feature selection
    strategy, num_additional_image_tokens and image_token, from processor_config.json. Older snapshots have
    no processor_config.json: then the model config gives the first two."""
    model = {} if config is None else {
        "patch_size": config.vision_config.patch_size,
        "vision_feature_select_strategy": config.vision_feature_select_strategy}
    # CLIP always adds its CLS token: transformers would count 0 without the key, one token too few per image
    defaults = {"num_additional_image_tokens": 1, "image_token": "<image>", **model}
    names = ("patch_size", "vision_feature_select_strategy", "num_additional_image_tokens", "image_token")
    s = {k: proc[k] if proc.get(k) is not None else defaults.get(k) for k in names}
    for key, ok, expected in [
            ("patch_size", type(s["patch_size"]) is int and s["patch_size"] > 0, "a positive integer"),
            ("vision_feature_select_strategy", s["vision_feature_select_strategy"] in ("default", "full"),
             "'default' or 'full'"),
            ("num_additional_image_tokens", type(s["num_additional_image_tokens"]) is int
             and s["num_additional_image_tokens"] >= 0, "a non-negative integer"),
            ("image_token", isinstance(s["image_token"], str), "a token string")]:
        if not ok:
            hint = "" if s[key] is not None else (
                ": there is no config.json to take it from either (transformers cannot count the image "
                "tokens then); put the checkpoint's config.json in the folder")
            raise ConfigError(f"{folder / 'processor_config.json'}: {key} = {s[key]!r}, expected "
                              f"{expected}{hint}")
    return s


def _check_against(processor, config, folder):
    """The processor files against the model config: a TokenizerError naming the file where they disagree."""
    ours = (processor.patch_size, processor.vision_feature_select_strategy)
    model = (config.vision_config.patch_size, config.vision_feature_select_strategy)
    if ours != model:
        raise TokenizerError(f"{folder / 'processor_config.json'}: patch_size {ours[0]} and strategy "
                             f"{ours[1]!r} disagree with the model config's {model[0]} and {model[1]!r}")
    if processor.image_token_id != config.image_token_index:
        raise TokenizerError(f"{folder / 'tokenizer.json'}: {processor.image_token!r} is id "
                             f"{processor.image_token_id} but the model config's image_token_index is "
                             f"{config.image_token_index}")
    n = processor.tokenizer.get_vocab_size()
    if n > config.text_config.vocab_size:
        raise TokenizerError(f"{folder / 'tokenizer.json'}: {n} tokens, more than the model's vocabulary "
                             f"(text_config.vocab_size {config.text_config.vocab_size}): another model's "
                             f"tokenizer?")


def _read_chat_template(folder, tok_config):
    """chat_template.jinja, then chat_template.json, then tokenizer_config.json (transformers 5's order)."""
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text(encoding="utf-8")
    template = (_read_json(folder / "chat_template.json") or {}).get("chat_template")
    return template if template is not None else tok_config.get("chat_template")
