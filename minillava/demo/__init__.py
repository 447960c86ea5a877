"""The embedded demo, kept together: its dataset (`shapes.py`: drawn coloured shapes and questions about
them), its training (`train.py`, `python -m minillava.demo.train`) and the checkpoint they produced (the
llava-hf files beside them: `config.json`, `model.safetensors`, the tokenizer and processor files).

The model code never imports this package; it only reads the checkpoint folder, like any other.
"""
