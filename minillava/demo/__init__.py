"""The embedded demo, kept together: its dataset (`shapes.py`: drawn coloured shapes and the kinds of question;
`wordings.py`: their trained and withheld wordings), its conversations (`conversations.py`: rendered with the chat
template and batched), its tokenizer (`tokenizer.py`), its training (`train.py`, `python -m minillava.demo.train`),
its evaluation (`evaluate.py`) and the checkpoint they produced (the llava-hf files beside them: `config.json`,
`model.safetensors`, the tokenizer and processor files).

The model code never imports this package; it only reads the checkpoint folder, like any other.
"""
