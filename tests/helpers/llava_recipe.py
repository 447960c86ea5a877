"""The original LLaVA-1.5 training recipe's ids and labels, restated line by line, to test minillava.training against.

From haotian-liu/LLaVA: llava/mm_utils.py `tokenizer_image_token`; llava/train/train.py `preprocess_multimodal`,
`preprocess_plain`, `preprocess_v1` (the version that shortens rounds after the first by one token for a
non-legacy tokenizer); llava/conversation.py `conv_vicuna_v1.get_prompt` (SeparatorStyle.TWO). The original keeps
one placeholder id per image (-200) and splices the image features in inside the model, with label -100 on them;
`original` expands the placeholder into the run of `<image>` ids a llava-hf model takes, to compare.

`encode(text) -> ids` stands for `tokenizer(text).input_ids` (BOS added), `legacy` for `tokenizer.legacy`.
"""
IMAGE, IMAGE_TOKEN_INDEX, IGNORE_INDEX = "<image>", -200, -100
SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
          "The assistant gives helpful, detailed, and polite answers to the user's questions.")
ROLES = {"human": "USER", "gpt": "ASSISTANT"}


def tokenizer_image_token(prompt, encode, bos_token_id):
    chunks = [encode(chunk) for chunk in prompt.split(IMAGE)]
    input_ids, offset = [], 0
    if chunks and chunks[0] and chunks[0][0] == bos_token_id:
        offset = 1
        input_ids.append(chunks[0][0])
    separator = [IMAGE_TOKEN_INDEX] * (offset + 1)
    for x in [item for pair in zip(chunks, [separator] * len(chunks)) for item in pair][:-1]:  # insert_separator
        input_ids.extend(x[offset:])
    return input_ids


def preprocess_multimodal(source):
    out = []
    for sentence in source:
        value = sentence["value"]
        if IMAGE in value:
            value = (IMAGE + "\n" + value.replace(IMAGE, "").strip()).strip()
        out.append({**sentence, "value": value})
    return out


def get_prompt(messages):
    """conv_vicuna_v1: system, sep " " after USER turns, sep2 "</s>" after ASSISTANT turns."""
    ret, seps = SYSTEM + " ", [" ", "</s>"]
    for i, (role, message) in enumerate(messages):
        ret += role + ": " + message + seps[i % 2] if message else role + ":"
    return ret


def preprocess_v1(source, encode, bos_token_id, legacy, has_image, correction=True):
    """-> (input_ids, labels, mismatch): mismatch is when the original prints 'WARNING: tokenization mismatch'.
    correction=False: the earlier preprocess_v1, before rounds were shortened for non-legacy tokenizers."""
    if ROLES[source[0]["from"]] != "USER":
        source = source[1:]
    conversation = get_prompt([(ROLES[s["from"]], s["value"]) for s in source])
    tokenize = (lambda t: tokenizer_image_token(t, encode, bos_token_id)) if has_image else encode
    input_ids = tokenize(conversation)
    target = list(input_ids)
    total_len = len(target)
    sep = " ASSISTANT: "
    cur_len = 1
    _mask(target, 0, cur_len)
    for i, rou in enumerate(conversation.split("</s>")):
        if rou == "":
            break
        parts = rou.split(sep)
        if len(parts) != 2:
            break
        parts[0] += sep
        round_len = len(tokenize(rou))
        instruction_len = len(tokenize(parts[0])) - 2
        if i != 0 and not legacy and correction:
            round_len -= 1
            instruction_len -= 1
        _mask(target, cur_len, cur_len + instruction_len)
        cur_len += round_len
    _mask(target, cur_len, len(target))
    mismatch = cur_len != total_len
    if mismatch:
        target = [IGNORE_INDEX] * len(target)
    return input_ids, target, mismatch


def _mask(target, start, end):
    """target[start:end] = IGNORE_INDEX on a torch tensor: a slice past the end masks what is there."""
    for k in range(max(start, 0), min(end, len(target))):
        target[k] = IGNORE_INDEX


def preprocess_plain(source, encode, bos_token_id):
    conversation = IMAGE + source[1]["value"] + "\n"  # the human turn replaced by the image; sep "\n"
    input_ids = tokenizer_image_token(conversation, encode, bos_token_id)
    target = list(input_ids)
    n = len(tokenizer_image_token(IMAGE, encode, bos_token_id))
    _mask(target, 0, n)
    return input_ids, target, False


def original(record, format, encode, bos_token_id, legacy, n_image_tokens, image_token_id, correction=True):
    """One record -> (input_ids, labels, mismatch) as the original trains it, the image placeholder expanded."""
    source = record["conversations"]
    has_image = "image" in record
    if has_image:
        source = preprocess_multimodal(source)
    if format == "plain":
        ids, labels, mismatch = preprocess_plain(source, encode, bos_token_id)
    else:
        ids, labels, mismatch = preprocess_v1(source, encode, bos_token_id, legacy, has_image, correction)
    out_ids, out_labels = [], []
    for t, label in zip(ids, labels):
        if t == IMAGE_TOKEN_INDEX:  # prepare_inputs_labels_for_multimodal: the features, labelled -100
            out_ids += [image_token_id] * n_image_tokens
            out_labels += [IGNORE_INDEX] * n_image_tokens
        else:
            out_ids.append(t)
            out_labels.append(label)
    return out_ids, out_labels, mismatch
