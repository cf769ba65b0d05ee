"""TorchServe's built-in `text_classifier` (ts/torch_handler/text_classifier.py), without
torchtext: the same text cleanup and tokenisation, the archive's vocabulary, one text per request.

Preprocessing, in TorchServe's order: HTML tags and entities removed, lowercase, English
contractions expanded ("don't" -> "do not", then apostrophes dropped), accents removed (NFKD,
ASCII), punctuation removed, torchtext's `basic_english` tokenizer, then the tokens and their
bigrams (ngrams = 2) looked up in the vocabulary. The model is TorchServe's text classifier
(an EmbeddingBag model): `forward(text, offsets)` with `text` the int64 token indices and
`offsets` `[0]`; it answers the class scores [1, K]. The answer is TorchServe's: the softmax of
every class, `{"<label>": p, ...}`, labels from `index_to_name.json`.

The vocabulary is the archive's `source_vocab.pt` (or the manifest's `sourceVocab`), read with
`torch.load(weights_only=True)`: a token -> index dict (`vocab.get_stoi()`) or a list of tokens
(`vocab.get_itos()`). A token not in it is `<unk>`'s index (0 without `<unk>`), as a torchtext
vocabulary with `set_default_index(vocab["<unk>"])`. A pickled torchtext `Vocab` object needs
torchtext and arbitrary unpickling; triserve refuses it when the model loads, saying how to save
the dict instead.
"""

from __future__ import annotations

import re
import string
import unicodedata
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from triserve.core.processors import Row, main_field
from triserve.errors import invalid

NGRAMS = 2
VOCAB_FILE = "source_vocab.pt"
_HTML = re.compile(r"<.*?>|&([a-z0-9]+|#[0-9]{1,6}|#x[0-9a-f]{1,6});")

# Common English contractions, expanded before the apostrophes go.
CONTRACTIONS = {
    "ain't": "is not", "aren't": "are not", "can't": "cannot", "can't've": "cannot have", "'cause": "because",
    "could've": "could have", "couldn't": "could not", "couldn't've": "could not have", "didn't": "did not",
    "doesn't": "does not", "don't": "do not", "hadn't": "had not", "hasn't": "has not", "haven't": "have not",
    "he'd": "he would", "he'll": "he will", "he's": "he is", "how'd": "how did", "how'll": "how will",
    "how's": "how is", "i'd": "i would", "i'll": "i will", "i'm": "i am", "i've": "i have", "isn't": "is not",
    "it'd": "it would", "it'll": "it will", "it's": "it is", "let's": "let us", "ma'am": "madam",
    "mightn't": "might not", "might've": "might have", "mustn't": "must not", "must've": "must have",
    "needn't": "need not", "o'clock": "of the clock", "oughtn't": "ought not", "shan't": "shall not",
    "she'd": "she would", "she'll": "she will", "she's": "she is", "should've": "should have",
    "shouldn't": "should not", "that'd": "that would", "that's": "that is", "there'd": "there would",
    "there's": "there is", "they'd": "they would", "they'll": "they will", "they're": "they are",
    "they've": "they have", "wasn't": "was not", "we'd": "we would", "we'll": "we will", "we're": "we are",
    "we've": "we have", "weren't": "were not", "what'll": "what will", "what're": "what are",
    "what's": "what is", "what've": "what have", "when's": "when is", "where'd": "where did",
    "where's": "where is", "who'll": "who will", "who's": "who is", "who've": "who have", "why's": "why is",
    "won't": "will not", "would've": "would have", "wouldn't": "would not", "y'all": "you all",
    "you'd": "you would", "you'll": "you will", "you're": "you are", "you've": "you have",
}
_CONTRACTION = re.compile("(" + "|".join(re.escape(k) for k in sorted(CONTRACTIONS, key=len, reverse=True)) + ")",
                          re.IGNORECASE)

# torchtext's basic_english normalisation: (pattern, replacement), in order.
_BASIC_ENGLISH = [(re.compile(p), r) for p, r in (
    (r"\'", " '  "), (r"\"", ""), (r"\.", " . "), (r"<br \/>", " "), (r",", " , "), (r"\(", " ( "),
    (r"\)", " ) "), (r"\!", " ! "), (r"\?", " ? "), (r"\;", " "), (r"\:", " "), (r"\s+", " "),
)]


def _expand(match: re.Match) -> str:
    text = match.group(0)
    expanded = CONTRACTIONS[text.lower()]
    return text[0] + expanded[1:]


def clean(text: str) -> str:
    text = _HTML.sub("", text).lower()
    text = _CONTRACTION.sub(_expand, text).replace("'", "")
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("utf-8", "ignore")
    return text.translate(str.maketrans("", "", string.punctuation))


def basic_english(line: str) -> list[str]:
    line = line.lower()
    for pattern, replacement in _BASIC_ENGLISH:
        line = pattern.sub(replacement, line)
    return line.split()


def ngrams(tokens: list[str], n: int = NGRAMS) -> Iterator[str]:
    """The tokens, then their 2-grams ... n-grams (torchtext's ngrams_iterator)."""
    yield from tokens
    for size in range(2, n + 1):
        for gram in zip(*[tokens[i:] for i in range(size)]):
            yield " ".join(gram)


def load_vocabulary(path: Path) -> dict[str, int]:
    import torch

    if not path.is_file():
        raise invalid(f"text_classifier: the archive has no {path.name} (the vocabulary the handler needs)")
    try:
        value = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        raise invalid(
            f"text_classifier: {path.name} is not a plain vocabulary (a pickled torchtext Vocab needs torchtext,"
            " which triserve does not load); save vocab.get_stoi() (a token -> index dict) with torch.save"
        ) from None
    if isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, int) for k, v in value.items()):
        return dict(value)
    if isinstance(value, (list, tuple)) and all(isinstance(t, str) for t in value):
        return {token: i for i, token in enumerate(value)}
    raise invalid(f"text_classifier: {path.name} must hold a token -> index dict or a list of tokens")


class TextClassifier:
    def __init__(self, vocabulary: dict[str, int], mapping: dict[str, str] | None) -> None:
        self.vocabulary = vocabulary
        self.unknown = vocabulary.get("<unk>", 0)
        self.mapping = mapping

    def indices(self, text: str) -> np.ndarray:
        tokens = basic_english(clean(text))
        return np.array([self.vocabulary.get(t, self.unknown) for t in ngrams(tokens)], dtype=np.int64)

    def preprocess(self, model: Any, rows: list[Row]) -> dict[str, np.ndarray]:
        if len(rows) != 1:
            raise invalid("text_classifier takes one text per request (TorchServe's handler does not batch)")
        value = main_field(rows[0])
        if isinstance(value, (bytes, bytearray)):
            try:
                value = bytes(value).decode("utf-8")
            except UnicodeDecodeError:
                raise invalid("text_classifier: the text is not UTF-8") from None
        if not isinstance(value, str):
            raise invalid("text_classifier: the request must be text")
        text, offsets = (t.name for t in model.config.input[:2])
        return {text: self.indices(value), offsets: np.zeros(1, dtype=np.int64)}

    def postprocess(self, model: Any, outputs: dict[str, np.ndarray]) -> list[dict[str, float]]:
        scores = np.asarray(outputs[model.output_names[0]], dtype=np.float32).reshape(1, -1)
        e = np.exp(scores - scores.max(axis=1, keepdims=True))
        probs = (e / e.sum(axis=1, keepdims=True))[0].tolist()
        keys = [self.mapping.get(str(i), str(i)) if self.mapping is not None else str(i) for i in range(len(probs))]
        return [dict(zip(keys, probs))]
