"""A folder's tokenizer files -> the `tokenizers.Tokenizer` transformers 5 builds from them.

Which tokenizer `AutoProcessor.from_pretrained(folder)` builds depends on whether it knows the model
(`AutoTokenizer.from_pretrained` in transformers' models/auto/tokenization_auto.py):

- With a llava model config (a checkpoint folder with its config.json): transformers lists `llava` among
  the model types whose hub `tokenizer_class` is wrong and builds a plain `TokenizersBackend`
  (tokenization_utils_tokenizers.py) from tokenizer.json as it is: its normalizer, pre-tokenizer, model,
  post-processor and decoder. The `legacy` flag of tokenizer_config.json has no effect.
- Without one (the processor files alone, as transformers' `processor.save_pretrained()` writes them): the class that
  tokenizer_config.json names. `TokenizersBackend` (what save_pretrained writes for a tokenizer loaded
  from a complete folder) and `PreTrainedTokenizerFast` use tokenizer.json as it is. `LlamaTokenizer`
  (the hub's llava-1.5 and bakLlava files) keeps only the vocabulary, the merges and the post-processor
  of tokenizer.json and rebuilds the rest (`LlamaTokenizer.__init__`, models/llama/tokenization_llama.py):
  no normalizer, a `Metaspace` pre-tokenizer, byte fallback, a decoder of its own.

In both cases the added tokens tokenizer_config.json declares are then added (their flags replacing those
of tokenizer.json), and so are the named special tokens the vocabulary lacks as added tokens.

Why the two give other ids. llava-1.5's tokenizer.json normalizes each piece of text between added tokens
by prepending "▁" and turning every space into "▁". The rebuilt Metaspace turns spaces into "▁" and
prepends one only to a piece that does not start with "▁" already (`legacy: true`, "always"), or only at
the very start of the text (`legacy` false or absent, "first"). So text next to `<image>`, a leading
space or a double space tokenizes differently: on the demo's files " <image> red" is
[1, 308, 308, 785, 308, 371] from tokenizer.json and [1, 308, 785, 371] from the rebuilt LlamaTokenizer.
"""
import json

from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers
from tokenizers.models import BPE

from .config import read_json
from .errors import TokenizerError

SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "pad_token")
LLAMA = ("LlamaTokenizer", "LlamaTokenizerFast")
AS_IS = (None, "TokenizersBackend", "PreTrainedTokenizerFast")  # tokenizer.json used as it is
LLAMA_DEFAULTS = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}  # LlamaTokenizer.__init__'s


def load_tokenizer(folder, model_known):
    """(tokenizers.Tokenizer, {special token: its text}, tokenizer_config.json) for a folder, as transformers
    builds them (see the module docstring). model_known: a llava model config goes with the folder."""
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise TokenizerError(f"{path}: file not found (minillava reads the fast tokenizer, tokenizer.json)")
    try:
        text = path.read_text(encoding="utf-8")
        tokenizer = Tokenizer.from_str(text)
    except Exception as e:  # tokenizers raises a bare Exception on malformed files
        raise TokenizerError(f"{path}: not a valid tokenizer.json ({e})") from None
    config_path = folder / "tokenizer_config.json"
    tok_config = read_json(config_path) if config_path.is_file() else {}
    name = tok_config.get("tokenizer_class")
    if not model_known and name not in AS_IS + LLAMA:
        raise TokenizerError(f"{config_path}: tokenizer_class {name!r} and no config.json: transformers then "
                             f"builds a {name}, which minillava does not reproduce (it does LlamaTokenizer "
                             f"and TokenizersBackend); put the checkpoint's config.json in the folder, and "
                             f"tokenizer.json is used as it is")
    # transformers keeps tokenizer.json for a byte-level (Llama-3 style) file whatever the class says
    rebuild = not model_known and name in LLAMA and '"ByteLevel"' not in text
    special = special_tokens(folder, tok_config, LLAMA_DEFAULTS if rebuild else {})
    declared = declared_tokens(folder, tok_config, tokenizer, special)
    if rebuild:
        tokenizer = llama_tokenizer(json.loads(text)["model"], tokenizer.post_processor, tok_config, path)
    tokenizer.add_tokens(declared)
    present = {t.content for t in tokenizer.get_added_tokens_decoder().values()}
    missing = [t for t in dict.fromkeys(special.values()) if t is not None and t not in present]
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in missing])
    tokenizer.no_padding()  # padding and truncation are the processor's, not settings stored in the file
    tokenizer.no_truncation()
    return tokenizer, special, tok_config


def llama_tokenizer(model, post_processor, tok_config, path):
    """The tokenizer `LlamaTokenizer.__init__` builds: tokenizer.json's vocabulary and merges in a BPE with
    byte fallback (and no unknown token), no normalizer, a Metaspace pre-tokenizer, its own decoder."""
    if model.get("type") != "BPE":
        raise TokenizerError(f"{path}: a {model.get('type')} model; without config.json transformers "
                             f"rebuilds it as a BPE LlamaTokenizer, which minillava does not reproduce: put "
                             f"the checkpoint's config.json in the folder")
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    tokenizer = Tokenizer(BPE(vocab=model["vocab"], merges=merges, fuse_unk=True, byte_fallback=True))
    prefix = tok_config.get("add_prefix_space")
    prefix = True if prefix is None else prefix
    scheme = ("always" if tok_config.get("legacy", False) else "first") if prefix else "never"
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=scheme, split=False)
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    tokenizer.decoder = decoders.Sequence(steps + [decoders.Strip(" ", 1, 0)] * bool(prefix))
    tokenizer.post_processor = post_processor  # BOS first, as tokenizer.json says
    return tokenizer


def special_tokens(folder, tok_config, defaults):
    """{bos_token, eos_token, unk_token, pad_token: the token's text or None}, from tokenizer_config.json
    where it lists its added tokens (`added_tokens_decoder`); older folders: special_tokens_map.json wins."""
    special = {k: tok_config.get(k, defaults.get(k)) for k in SPECIAL_TOKENS}
    if "added_tokens_decoder" not in tok_config and (folder / "special_tokens_map.json").is_file():
        stored = read_json(folder / "special_tokens_map.json")
        special.update({k: v for k, v in stored.items() if k in SPECIAL_TOKENS})
    special = {k: v.get("content") if isinstance(v, dict) else v for k, v in special.items()}
    for k, v in special.items():
        if v is not None and not isinstance(v, str):
            raise TokenizerError(f"{folder / 'tokenizer_config.json'}: {k} = {v!r}, expected a token string")
    return special


def declared_tokens(folder, tok_config, tokenizer, special):
    """The added tokens tokenizer_config.json declares (`added_tokens_decoder`), in id order. Older folders:
    added_tokens.json, overridden by tokenizer.json's own added tokens (transformers' legacy path)."""
    if "added_tokens_decoder" in tok_config:
        entries = tok_config["added_tokens_decoder"]
        try:  # older transformers saved a "__type": "AddedToken" beside the fields
            return [AddedToken(**{k: v for k, v in entries[i].items() if k != "__type"})
                    for i in sorted(entries, key=int)]
        except (TypeError, ValueError, AttributeError) as e:
            raise TokenizerError(f"{folder / 'tokenizer_config.json'}: added_tokens_decoder is not a map of "
                                 f"token ids to added tokens ({e})") from None
    by_id = {}
    if (folder / "added_tokens.json").is_file():
        for content, i in read_json(folder / "added_tokens.json").items():
            if type(i) is not int:
                raise TokenizerError(f"{folder / 'added_tokens.json'}: {content!r} has id {i!r}, expected an "
                                     f"integer")
            is_special = content in special.values()
            by_id[i] = AddedToken(content, normalized=not is_special, special=is_special)
    by_id.update(tokenizer.get_added_tokens_decoder())
    return [by_id[i] for i in sorted(by_id)]
