"""Helpers the tests share: tiny checkpoints built by transformers (checkpoints.py) and the tokenizer and
processor files of a llava-hf folder (tokenizer_files.py)."""
