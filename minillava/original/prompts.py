"""Original mode: prompts and images the way the original LLaVA repository makes them (its vicuna_v1
conversation, `tokenizer_image_token`, `expand2square`), for comparing against the original release."""

import torch

from ..chat import format_conversation
from ..errors import PromptError

IMAGE_TOKEN = "<image>"


def tokenize_original(processor_or_tokenizer, prompt, n_image_tokens, image_token_id):
    """Token ids as the original `tokenizer_image_token` makes them, with each `<image>` as a run of
    `n_image_tokens` ids `image_token_id` (the original puts one -200 there and splices the features in).

    The prompt is split on "<image>" and each chunk is tokenized on its own, so each chunk gets
    sentencepiece's leading "▁": "USER: <image>\\nHi" -> [1, 3148, 1001, 29901, 29871, <image>, 29871, 13, ...]
    where one tokenizer call on the whole string (llava-hf) may give no 29871 after the image
    (the original's `tokenizer_image_token` in llava/mm_utils.py). Every chunk but the first loses the BOS its
    tokenizer call added.
    processor_or_tokenizer: a minillava Processor or a `tokenizers.Tokenizer`.
    """
    tok = getattr(processor_or_tokenizer, "tokenizer", processor_or_tokenizer)
    chunks = [tok.encode(chunk).ids for chunk in prompt.split(IMAGE_TOKEN)]
    bos = getattr(processor_or_tokenizer, "bos_token_id", None) or tok.token_to_id("<s>")
    offset = 1 if chunks[0] and chunks[0][0] == bos else 0  # as the original: x[offset:] for every later chunk
    ids = chunks[0][:]
    for chunk in chunks[1:]:
        ids += [image_token_id] * n_image_tokens + chunk[offset:]
    return ids


def prepare(processor, conversation_or_prompt, images=None, pad=True):
    """Model inputs the way the original LLaVA makes them: {"input_ids", "attention_mask"[, "pixel_values"]}.

    conversation_or_prompt: a conversation (list of {"role", "content"} messages), rendered with the
    vicuna_v1 template (`minillava.chat.format_conversation(..., style="vicuna_v1")`: the original system
    prompt, "</s>" after each answer, images first in the first user message), or a prompt string used
    as it is. Tokenized with `tokenize_original`. images: one image or a list, in `<image>` order; each is
    padded to a square of the mean colour (122, 116, 104) first (original `expand2square`; pad=False
    for checkpoints whose image_aspect_ratio is not "pad"), then resized and cropped as usual.
    processor: the minillava Processor of a llava-hf folder (e.g. one written by `convert_original`).
    """
    if isinstance(conversation_or_prompt, str):
        prompt = conversation_or_prompt
    else:
        prompt = format_conversation(conversation_or_prompt, add_generation_prompt=True, style="vicuna_v1")
    images = [] if images is None else list(images) if isinstance(images, (list, tuple)) else [images]
    if prompt.count(IMAGE_TOKEN) != len(images):
        raise PromptError(f"the prompt contains {prompt.count(IMAGE_TOKEN)} {IMAGE_TOKEN} marker(s) but "
                          f"{len(images)} image(s) were given")
    out, n = {}, 0
    if images:
        out["pixel_values"] = processor.preprocess(images, pad_to_square=pad)  # (N, 3, H, W)
        n = processor.num_image_tokens(*out["pixel_values"].shape[-2:])
    ids = torch.tensor([tokenize_original(processor, prompt, n, processor.image_token_id)])
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), **out}
