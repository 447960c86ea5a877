"""What LLaVA-1.5 trains on, token by token: instruction records -> ids, labels and pixels; the loss; which
parameters each stage trains. A reference for trainers and data pipelines to check against, not a trainer.

    model, processor = minillava.load(folder, weights="materialized")  # trainable weights: see `trainable`
    params = training.trainable(model, stage=2)  # the projector and the decoder; the vision tower frozen
    optimizer = torch.optim.AdamW(params, lr=2e-5)
    inputs = training.batch(processor, records, image_folder="images", format="vicuna_v1")
    logits = model(inputs["input_ids"], inputs["pixel_values"], inputs["attention_mask"])
    training.loss(logits, inputs["labels"]).backward()  # = LlavaForConditionalGeneration(**inputs).loss
    optimizer.step()
    optimizer.zero_grad()

A step skips most of the vocabulary-wide work when the model gives only the logits the loss reads, at the
positions before a labelled token (the same loss and gradients, up to the order of float sums):

    keep = training.scored_positions(inputs["labels"])
    logits = model(inputs["input_ids"], inputs["pixel_values"], inputs["attention_mask"], logits_to_keep=keep)
    loss = training.loss(logits, inputs["labels"], logits_to_keep=keep)

Records are LLaVA's instruction data (LLaVA-Instruct-150K, llava_v1_5_mix665k.json): {"id", "image" (optional,
a path relative to `image_folder`), "conversations": [{"from": "human" | "gpt", "value": "..."}, ...]}, "<image>"
in the human value the image belongs to. The formats (haotian-liu/LLaVA, llava/train/train.py):
- "plain", stage 1 (`preprocess_plain`): "<image>" + caption + "\\n"; the caption and its "\\n" are labelled.
- "vicuna_v1", stage 2 (`preprocess_multimodal`, `preprocess_v1`): the vicuna_v1 system prompt, then
  "USER: {question} ASSISTANT: {answer}</s>" per turn, "<image>\\n" moved to the start of its value; each answer
  (with the space before it) and its "</s>" are labelled, nothing else.
- "template": the folder's chat template, labelled where transformers' `apply_chat_template(...,
  return_assistant_tokens_mask=True)` sets `assistant_masks` (processing_utils.py,
  `_adjust_assistant_masks_indices`): each token overlapping a {% generation %} block. llava-hf's template puts
  each answer *and the space after it* in the block and writes no "</s>": the mask covers "▁green", then the next
  token, "▁USER:", which holds that space, and never a "</s>". A model tuned on it learns to say "USER:" after
  an answer and never learns to stop.

Labels are never counted. A format renders a record to one text and the character spans to learn; `encode`
tokenizes the text once and labels each token whose characters overlap a span (its offsets: transformers' rule).
The original re-tokenizes each round alone and counts; where the count disagrees with the whole it prints
"WARNING: tokenization mismatch" and masks the sample. Its algorithm restated (tests/test_training_labels.py),
with the Llama-2 tokenizer it goes wrong on (minillava labels each answer and its "</s>" in every case):
- "</s>" in a value: the original splits rounds there and masks the sample (minillava keeps it as the EOS
  token, labelled in an answer, not in a question);
- " ASSISTANT: " in a value: a round splits in three, the sample is masked;
- a question that ends with "ASSISTANT:": no warning, but the original labels the real "ASSISTANT:" as answer;
- a tokenizer whose `legacy` flag is wrong: llava-hf's tokenizer.json tokenizes the legacy way while its
  tokenizer_config says `legacy: false`, so the original shortens every round after the first by a token and
  masks every multi-turn sample (as `preprocess_v1` without that correction does with a non-legacy tokenizer).
On records free of these, the original's ids and labels are minillava's, token for token: checked on
generated records with the Llama-2 tokenizer, `legacy` true and false, and with the demo's.

Token ids. "plain" and "vicuna_v1" tokenize as the original does (`tokenizer_image_token`, llava/mm_utils.py):
each piece between image markers alone, the BOS of the later pieces dropped; its one placeholder id per image
becomes the run of `<image>` tokens a llava-hf model expects (576 for 336 px). "template" tokenizes the whole
text, markers expanded, as llava-hf's processor and so transformers do. With llava-hf's tokenizer.json the two
agree; with a non-legacy tokenizer the piece after an image gains a "▁": "USER: <image>\\nWhat" gives
[..., 29871, <image>, 29871, 13, 5618] in pieces and [..., 29871, <image>, 13, 5618] whole.

Images as LLaVA-1.5 trained them (`image_aspect_ratio: pad`): expanded to a square of the mean colour, then the
CLIP resize and crop. A llava-hf folder's own processor does not pad: it crops the centre, cutting off the sides
of a wide image (`pad_images=False`). (The original opens files with PIL's convert("RGB"), without the EXIF
rotation minillava and transformers apply.) Batches are right-padded as the original's collator pads (pad ids,
labels -100); `max_length` cuts as its `model_max_length` does, but never into an image's tokens.
"""
from pathlib import Path

import torch
import torch.nn.functional as F

from .chat import VICUNA_V1_SYSTEM
from .errors import ImageError, PromptError, TokenizerError, TrainingError
from .llama import kept
from .template import is_batch, render

FORMATS = ("plain", "vicuna_v1", "template")
IGNORE_INDEX = -100  # a label the loss skips (torch's cross_entropy ignore_index, the original's IGNORE_INDEX)
IMAGE = "<image>"
ROLES = {"human": "user", "gpt": "assistant"}


# --- a batch of records --------------------------------------------------------------------------------------

def batch(processor, records, image_folder=None, format="vicuna_v1", max_length=None, pad_images=True, numbers=None):
    """LLaVA instruction records -> {"input_ids", "attention_mask", "pixel_values" (None when no record has an
    image), "labels"}, right-padded, labels -100 where there is no loss. See the module docstring.
    numbers: each record's number in the messages, its place in the data set (default 0, 1, ...)."""
    if format not in FORMATS:
        raise TrainingError(f"format {format!r}, expected one of {FORMATS}")
    if not isinstance(records, (list, tuple)) or not records:
        raise TrainingError(f"records must be a non-empty list of LLaVA records, got {records!r:.80}")
    texts, pixels = [], []
    for i, record in zip(numbers or range(len(records)), records):
        name, turns, image = check_record(record, i, format)
        texts.append((name, *render_record(processor, turns, format)))
        if image is not None:
            pixels.append(_pixels(processor, image, image_folder, pad_images, name))
    pixel_values = torch.cat(pixels) if pixels else None
    n = processor.num_image_tokens(*pixel_values.shape[-2:]) if pixels else 0
    rows = []
    for name, text, spans in texts:
        ids, labels = encode(processor, text, spans, n, chunked=format != "template")
        if max_length is not None and processor.image_token_id in ids[max_length:]:
            raise TrainingError(f"{name}: {len(ids)} tokens, and max_length {max_length} would cut into its image's "
                                f"tokens; raise max_length or shorten the record")
        rows.append((ids[:max_length], labels[:max_length]))  # the original's model_max_length (None: all)
    return collate(processor, rows, pixel_values)


def check_record(record, i, format):
    """(a name for messages, [(role, value)], image or None), or a TrainingError naming the record."""
    name = f"record #{i}" + (f" (id {record['id']!r})" if isinstance(record, dict) and "id" in record else "")
    turns = record.get("conversations") if isinstance(record, dict) else None
    if not isinstance(turns, list) or not turns:
        raise TrainingError(f"{name}: expected a dict with a non-empty 'conversations' list, got {record!r:.100}")
    image = record.get("image")
    for j, turn in enumerate(turns):
        if not isinstance(turn, dict) or turn.get("from") not in ROLES:
            raise TrainingError(f"{name}, turn {j}: expected {{'from': 'human' | 'gpt', 'value': ...}}, "
                                f"got {turn!r:.80}")
        role, value = turn["from"], turn.get("value")
        if not isinstance(value, str) or not value.strip():
            raise TrainingError(f"{name}, turn {j} ({role}): the value is empty ({value!r}); every turn needs text")
        expected = ("human", "gpt")[j % 2]
        if role != expected:
            raise TrainingError(f"{name}, turn {j}: from {role!r}, expected {expected!r}: a conversation starts with "
                                f"'human' and the two alternate")
        if IMAGE in value and role == "gpt":
            raise TrainingError(f"{name}, turn {j}: an {IMAGE} marker in a gpt turn; images belong to human turns")
    if turns[-1]["from"] != "gpt":
        raise TrainingError(f"{name}: ends with a human turn; its answer is missing")
    markers = sum(t["value"].count(IMAGE) for t in turns)
    if image is None and markers:
        raise TrainingError(f"{name}: {IMAGE} in the text but no 'image' in the record")
    if image is not None and markers != 1:
        raise TrainingError(f"{name}: has an image and {markers} {IMAGE} markers; put one {IMAGE} where the image "
                            f"goes, in a human turn")
    if format == "plain" and (len(turns) != 2 or image is None):
        raise TrainingError(f"{name}: the plain format (stage 1) takes an image and one human turn + one gpt "
                            f"caption, got {len(turns)} turns{'' if image is not None else ' and no image'}")
    return name, [(t["from"], t["value"]) for t in turns], image


def render_record(processor, turns, format):
    """[(role, value)] -> (text with <image> markers, [(start, end) of each labelled character span])."""
    # preprocess_multimodal: the value holding the image becomes "<image>\n" + the rest, stripped
    turns = [(r, IMAGE + "\n" + v.replace(IMAGE, "").strip() if IMAGE in v else v) for r, v in turns]
    if format == "plain":  # preprocess_plain: the human turn is replaced by the image alone
        text = IMAGE + turns[1][1] + "\n"
        return text, [(len(IMAGE), len(text))]
    if format == "vicuna_v1":  # conv_vicuna_v1.get_prompt (SeparatorStyle.TWO: " " after USER, "</s>" after ASSISTANT)
        text, spans = VICUNA_V1_SYSTEM + " ", []
        for role, value in turns:
            if role == "human":
                text += f"USER: {value} "
            else:
                text += "ASSISTANT:"
                spans.append((len(text), len(text) + len(f" {value}</s>")))
                text += f" {value}</s>"
        return text, spans
    messages = [{"role": ROLES[role], "content": [{"type": "image"}] * value.startswith(IMAGE) +
                 [{"type": "text", "text": value.removeprefix(IMAGE + "\n")}]} for role, value in turns]
    return _render_chat(processor, processor.chat_template, messages)


def _render_chat(processor, template, conversation, add_generation_prompt=False, **kwargs):
    if not isinstance(template, str):
        raise PromptError("this processor has no chat template (chat_template.jinja, chat_template.json or "
                          "tokenizer_config.json): the 'template' format needs one")
    return render(template, conversation, add_generation_prompt, processor.special_tokens, spans=True, **kwargs)


def _pixels(processor, image, folder, pad, name):
    """One record's image -> (1, 3, H, W); a path is relative to `folder`. pad: LLaVA-1.5's pad-to-square."""
    if isinstance(image, (str, Path)) and folder is not None:
        image = Path(folder) / image
    try:
        return processor.preprocess([image], pad_to_square=True if pad else None)
    except ImageError as e:
        raise TrainingError(f"{name}: {e}") from None


# --- text and labelled spans -> ids and labels: the one place labels are made ----------------------------------

def encode(processor, text, spans, n_image_tokens=0, chunked=False):
    """Text with <image> markers and the character spans to learn -> (ids, labels), lists of ints: labels[i] is
    ids[i] where token i overlaps a span (its offsets), else -100. Each marker becomes n_image_tokens image ids.

    chunked=False: the whole text, each marker expanded in it, one tokenizer call (llava-hf's processor).
    chunked=True: the original's tokenizer_image_token: each piece between markers tokenized alone (each with
    the tokenizer's leading "▁"), the BOS of every piece after the first dropped."""
    tok, marker = processor.tokenizer, processor.image_token
    pieces = text.split(marker)
    if len(pieces) > 1 and n_image_tokens < 1:
        raise PromptError(f"the text has {len(pieces) - 1} {marker} marker(s) but n_image_tokens is {n_image_tokens}")
    if not chunked:
        e = tok.encode(text.replace(marker, marker * n_image_tokens))  # no marker: the text as it is
        ids, offsets = e.ids, e.offsets
        grown = (n_image_tokens - 1) * len(marker)  # the characters each expansion adds before later text
        spans = [(a + grown * text.count(marker, 0, a), b + grown * text.count(marker, 0, b)) for a, b in spans]
    else:
        ids, offsets, start, skip = [], [], 0, 0
        for i, piece in enumerate(pieces):
            e = tok.encode(piece)
            if i == 0:
                skip = int(bool(e.ids) and e.ids[0] == processor.bos_token_id)
            else:  # the image, where its marker was
                ids += [processor.image_token_id] * n_image_tokens
                offsets += [(start - len(marker), start)] * n_image_tokens
            drop = skip if i else 0
            ids += e.ids[drop:]
            offsets += [(start + a, start + b) for a, b in e.offsets[drop:]]
            start += len(piece) + len(marker)
    labels = [t if any(a < end and b > begin for begin, end in spans) else IGNORE_INDEX
              for t, (a, b) in zip(ids, offsets)]  # a zero-width token (BOS) overlaps nothing
    return ids, labels


def collate(processor, rows, pixel_values=None):
    """[(ids, labels)] -> the batch dict, right-padded: pad ids and label -100 after each sequence (the original
    collator's padding; causal attention never lets a real token see the pads after it)."""
    longest = max(len(ids) for ids, _ in rows)
    pad = processor.pad_token_id
    if pad is None and any(len(ids) != longest for ids, _ in rows):
        raise TokenizerError("cannot pad the batch: the tokenizer has no pad_token (tokenizer_config.json)")
    input_ids = torch.full((len(rows), longest), pad or 0, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), longest), dtype=torch.long)
    labels = torch.full((len(rows), longest), IGNORE_INDEX, dtype=torch.long)
    for i, (ids, lab) in enumerate(rows):
        input_ids[i, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        labels[i, :len(lab)] = torch.tensor(lab, dtype=torch.long)
        attention_mask[i, :len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixel_values, "labels": labels}


# --- the chat template, tokenized: processor.apply_chat_template(tokenize=True) -----------------------------------

def chat_inputs(processor, template, conversation, add_generation_prompt=False, return_dict=False,
                return_assistant_tokens_mask=False, **kwargs):
    """What transformers' `processor.apply_chat_template(conversation, tokenize=True, return_dict=True,
    return_assistant_tokens_mask=True, return_tensors="pt")` returns: input_ids, attention_mask, pixel_values (when
    the conversation carries images: each image item's "image", "url", "path" or "base64", an image_url item's url),
    assistant_masks (1 on each token overlapping a {% generation %} block). A list of conversations is padded as
    the processor pads. return_dict=False: input_ids alone."""
    conversations = conversation if is_batch(conversation) else [conversation]
    texts, spans, images = [], [], []
    for c in conversations:
        text, found = _render_chat(processor, template, c, add_generation_prompt, **kwargs)
        bos = processor.special_tokens.get("bos_token")
        if bos and text.startswith(bos):  # transformers then adds no BOS of its own
            raise PromptError(f"the chat template writes the BOS token {bos!r} itself; minillava's "
                              f"tokenize=True would add a second one: render with tokenize=False and tokenize "
                              f"without it")
        texts.append(text)
        spans.append(found)
        for item in [i for m in c if isinstance(m, dict) and isinstance(m.get("content"), list) for i in m["content"]]:
            if isinstance(item, dict) and item.get("type") == "image":  # where transformers looks (processing_utils.py)
                images += [item[key] for key in ("image", "url", "path", "base64") if key in item]
            elif isinstance(item, dict) and item.get("type") == "image_url" and "image_url" in item:  # OpenAI style
                url = item["image_url"]
                images.append(url.get("url", "") if isinstance(url, dict) else url)
    out = processor(text=texts if is_batch(conversation) else texts[0], images=images or None)
    if not return_dict:
        return out["input_ids"]
    if return_assistant_tokens_mask:
        n = processor.num_image_tokens(*out["pixel_values"].shape[-2:]) if images else 0
        masks = torch.zeros_like(out["input_ids"])
        for row, text, found, real in zip(masks, texts, spans, out["attention_mask"].bool()):
            _, labels = encode(processor, text, found, n)
            row[real] = (torch.tensor(labels) != IGNORE_INDEX).long()  # the same tokens, placed as padded
        out["assistant_masks"] = masks
    return out


# --- the loss, and what each stage trains -------------------------------------------------------------------------

def loss(logits, labels, num_items_in_batch=None, logits_to_keep=0):
    """The loss transformers' LlavaForConditionalGeneration(..., labels=labels) returns (its ForCausalLMLoss,
    loss/loss_utils.py): logits (B, T, vocab) in float32, position t scored on token t + 1, labels -100 skipped,
    the mean over the labelled tokens. num_items_in_batch: divide the sum by this count instead, as transformers'
    Trainer does under gradient accumulation (the labelled tokens of all the micro-batches of one step).
    logits_to_keep: the positions `logits` hold, as the model was given them (`scored_positions`, or n: the last n;
    0, the default: all)."""
    logits = logits.float()
    target = next_tokens(labels).to(logits.device)[:, kept(logits_to_keep)]  # (B, T'): the next token's label
    if logits.shape[:2] != target.shape:
        raise TrainingError(f"logits hold {tuple(logits.shape[:2])} (batch, positions), labels {tuple(target.shape)}: "
                            f"give loss the logits_to_keep the model was given, or logits at every position")
    reduction = "mean" if num_items_in_batch is None else "sum"
    value = F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=IGNORE_INDEX, reduction=reduction)
    return value if num_items_in_batch is None else value / num_items_in_batch


def next_tokens(labels):
    """(B, T) labels -> (B, T): what each position is scored on, the next token's label (-100 after the last)."""
    return F.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:]


def scored_positions(labels):
    """(B, T) labels -> the positions whose next token is labelled in some row, a 1-D tensor: the only logits the
    loss reads. model(..., logits_to_keep=keep) then loss(logits, labels, logits_to_keep=keep) skips the
    vocabulary-wide product and softmax everywhere else (the image tokens and the questions: most of a LLaVA
    sequence). The same loss and gradients, up to the order of float sums; `loss` on every position's logits is
    the one equal to transformers' to the bit."""
    if not torch.is_tensor(labels) or labels.ndim != 2:
        raise TrainingError(f"labels must be a (batch, length) tensor, as training.batch gives them; got "
                            f"{tuple(labels.shape) if torch.is_tensor(labels) else type(labels).__name__}")
    scored = (next_tokens(labels) != IGNORE_INDEX).any(0)  # (T,)
    return torch.arange(labels.shape[1], device=labels.device)[scored]  # (K,)


def trainable(model, stage):
    """Freeze the model but for what LLaVA-1.5 trains in `stage`, and return those parameters for the optimizer.
    Stage 1: the projector (scripts/v1_5/pretrain.sh, --tune_mm_mlp_adapter). Stage 2: the projector and the whole
    decoder, embeddings and lm_head included (finetune.sh). The vision tower is frozen in both.
    The weights to train must be held in the dtype the model computes in: a float16/bfloat16 checkpoint loaded in
    float32 with weights="stored" (the CPU default) keeps its matrices as stored, which an optimizer cannot update
    exactly; load it with weights="materialized"."""
    if stage not in (1, 2):
        raise TrainingError(f"stage {stage!r}, expected 1 (the projector) or 2 (the projector and the decoder)")
    parts = ["multi_modal_projector"] + (["language_model"] if stage == 2 else [])
    narrow = [(n, p.dtype) for n, p in model.named_parameters() if n.split(".")[0] in parts and p.dtype != model.dtype]
    if narrow:
        raise TrainingError(f"{len(narrow)} weight(s) to train are held as stored ({narrow[0][1]}, e.g. "
                            f"{narrow[0][0]!r}) while the model computes in {model.dtype}: load the checkpoint with "
                            f"weights='materialized' to train it")
    model.requires_grad_(False)
    for part in parts:
        getattr(model, part).requires_grad_(True)
    return [p for p in model.parameters() if p.requires_grad]
