"""The original LLaVA-1.5 release (liuhaotian/llava-v1.5-7b, haotian-liu/LLaVA): load it, convert it,
and prompt it the way the original repository does.

An original checkpoint is a Vicuna `LlavaLlamaForCausalLM` saved as PyTorch pickles
(`pytorch_model-0000N-of-0000M.bin` + `pytorch_model.bin.index.json`) with keys `model.layers.N.*`,
`lm_head.weight` and `model.mm_projector.{0,2}.*`. The CLIP tower is not in it: LLaVA loads it at run
time from `mm_vision_tower` (openai/clip-vit-large-patch14-336), so you pass that folder too (its
`model.safetensors`, else its `pytorch_model.bin`; the text tower and projections in it are skipped).
The original code: haotian-liu/LLaVA's llava/model/llava_arch.py (`prepare_inputs_labels_for_multimodal`)
and llava/mm_utils.py (`tokenizer_image_token`); transformers' own conversion script is
models/llava/convert_llava_weights_to_hf.py. reading.py reads the files, layout.py renames the keys and
writes the config, convert.py writes a llava-hf folder or loads a model; prompts.py is the original mode.

    model = load_original("llava-v1.5-7b", "clip-vit-large-patch14-336")   # a minillava Llava
    convert_original("llava-v1.5-7b", "clip-vit-large-patch14-336", "llava-v1.5-7b-hf")  # a llava-hf folder

Vocabulary. The original has 32000 rows and no `<image>` row: the image is spliced in at a -200
placeholder. minillava (like llava-hf) marks image positions with a real id, so both functions pad
`embed_tokens` and `lm_head` exactly as llava-hf did: 32000 + 2 rounded up to a multiple of 64 = 32064
rows, `<image>` = 32000, `<pad>` = 32001 (same ids, same config, same tokenizer files as llava-hf).
The new rows are the *mean* of the old rows (llava-hf sampled them around that mean with a tiny
covariance). A mean `lm_head` row scores the mean of the 32000 real logits, which is never above
their maximum, so greedy decoding can never pick a padded id, and `logits[..., :32000]` are exactly
the original model's logits. The embedding rows are never read: `<image>` positions are overwritten
by image features and `<pad>` positions are masked.

Original mode (`prepare`): the vicuna_v1 conversation with its system prompt and `</s>` after each
answer, the prompt tokenized chunk by chunk around `<image>` (`tokenize_original`), and images padded
to a square of the mean colour before the usual CLIP resize and crop (the original `expand2square`).

Memory. `load_original` converts every weight to the compute dtype (float32 on a CPU: 28 GB for the 7b) and
checks first that this fits, failing with a DeviceError before anything is read; `convert_original` once,
then `minillava.load` of the llava-hf folder keeps the float16 weights as stored (about half).

Pickles: `.bin` files are read only here, only with `torch.load(weights_only=True)`, which refuses
anything but tensors and plain containers; whatever is not a dict of name -> tensor is refused too.
"""
from .convert import convert_original, load_original, write_processor_files
from .layout import clip_key, llava_hf_config, original_key
from .prompts import prepare, tokenize_original
from .reading import read_bin

__all__ = ["load_original", "convert_original", "write_processor_files", "llava_hf_config", "read_bin",
           "original_key", "clip_key", "prepare", "tokenize_original"]
