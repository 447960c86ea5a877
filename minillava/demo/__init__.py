"""The embedded demo, kept together: its dataset (`shapes.py`: drawn coloured shapes, the kinds of question and
their trained and withheld wordings), its conversations (`conversations.py`: rendered with the chat template and
batched), its training (`train.py`, `python -m minillava.demo.train`), its evaluation (`evaluate.py`), the
non-weight files of its checkpoint (`checkpoint.py`: config, tokenizer, processor files) and the checkpoint they
produced (the llava-hf files beside them: `config.json`, `model.safetensors`, the tokenizer and processor files).

The model code never imports this package; it only reads the checkpoint folder, like any other.
"""
