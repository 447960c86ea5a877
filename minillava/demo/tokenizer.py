"""The demo's tokenizer: a Llama-style BPE with byte fallback, learned from the dataset's trained questions and
answers (never the withheld wordings), written in the llava-hf tokenizer layout."""
import json

from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from ..checkpoint import write_json
from . import shapes

# Two-word places are one token each ("▁bottom▁left"), so that a position answer is decided in one step. With
# "▁bottom" and "▁left" apart, the model named the row right and then the column of the row's other shape
# (all 29 position errors of the previous demo in 200 questions were in the right row: "bottom" for "bottom left").
PLACES = [p for row in shapes.POSITIONS for p in row if " " in p]


def build_tokenizer(out):
    """Write the tokenizer files to `out`; return the id of <image> (<pad> is the next one)."""
    words = shapes.trained_texts() + [shapes.sample(i, "description")["answer"] for i in range(500)]
    words += ["USER: ASSISTANT:"] * 50
    bpe = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    bpe.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")  # merges stay inside words
    bpe.train_from_iterator(words, trainers.BpeTrainer(vocab_size=10_000, special_tokens=["<unk>", "<s>", "</s>"],
                                                       show_progress=False))
    learned = json.loads(bpe.to_str())["model"]
    # merges across a space: the Llama layout has no pre-tokenizer, so BPE applies them to the whole text
    learned["vocab"].update({"▁" + p.replace(" ", "▁"): len(learned["vocab"]) + i for i, p in enumerate(PLACES)})
    learned["merges"] += [["▁" + p.split()[0], "▁" + p.split()[1]] for p in PLACES]
    # Llama's id layout: <unk> <s> </s>, the 256 byte tokens <0x00>..<0xFF>, then the learned pieces
    vocab = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    vocab += [t for t, _ in sorted(learned["vocab"].items(), key=lambda kv: kv[1]) if t not in vocab]
    n = len(vocab)
    special = dict(single_word=False, lstrip=False, rstrip=False, normalized=False, special=True)
    added = [dict(id=i, content=t, **special) for i, t in enumerate(["<unk>", "<s>", "</s>"])]
    added += [dict(id=n, content="<image>", **special), dict(id=n + 1, content="<pad>", **special)]
    # the Llama-2 tokenizer.json layout (what llava-hf ships): a normalizer that prepends "▁" and turns
    # spaces into "▁", no pre-tokenizer, BOS added by the post-processor, byte fallback in the decoder
    spec = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
            "normalizer": {"type": "Sequence",
                           "normalizers": [{"type": "Prepend", "prepend": "▁"},
                                           {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]},
            "pre_tokenizer": None,
            "post_processor": {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                                                                        {"Sequence": {"id": "A", "type_id": 0}}],
                               "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                                        {"Sequence": {"id": "A", "type_id": 0}},
                                        {"SpecialToken": {"id": "<s>", "type_id": 1}},
                                        {"Sequence": {"id": "B", "type_id": 1}}],
                               "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}},
            "decoder": {"type": "Sequence",
                        "decoders": [{"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
                                     {"type": "ByteFallback"}, {"type": "Fuse"},
                                     {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
            "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
                      "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True,
                      "vocab": {t: i for i, t in enumerate(vocab)},
                      "merges": [m if isinstance(m, str) else " ".join(m) for m in learned["merges"]]}}
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False, indent=1), encoding="utf-8")
    decoder = {str(a["id"]): {k: a[k] for k in ("content", "lstrip", "normalized", "rstrip", "single_word", "special")}
               for a in added}
    write_json(out / "tokenizer_config.json", {
        "add_bos_token": True, "add_eos_token": False, "added_tokens_decoder": decoder, "bos_token": "<s>",
        "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>", "legacy": True, "padding_side": "left",
        "model_max_length": 2048, "tokenizer_class": "LlamaTokenizer", "clean_up_tokenization_spaces": False})
    write_json(out / "special_tokens_map.json", {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
                                                 "pad_token": "<pad>"})
    write_json(out / "added_tokens.json", {"<image>": n, "<pad>": n + 1})
    return n  # the id of <image>; <pad> is n + 1
