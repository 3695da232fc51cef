"""A fixed vocabulary: single characters for text, whole numbers 0..MAX_NUMBER as single tokens.

- Why numbers as tokens: each trace step becomes one lookup (`15+12=27`), sequences get short, and
  depth alone then decides whether a model can answer directly (an early calibration run); with one
  token per digit a one-layer model could barely run a trace (docs/LOG.md, 2026-11-26).
- A run of digits is always one number token (greedy, longest run), so "12" is the token for twelve,
  never '1' then '2'. A number above MAX_NUMBER, or any character outside the vocabulary, is an error
  that names the culprit: silent <unk> tokens hide data bugs.
- The vocabulary is fixed by this file, not learned, so every checkpoint of every run shares it; a
  checkpoint stores it and loading refuses a mismatch.
"""

import re

MAX_NUMBER = 199
TEXT_CHARS = "\n abcdefghijklmnopqrstuvwxyz.,:;?!'+-=%*()"
PAD = "<pad>"  # id 0: fills short rows of a batch, never predicted (its loss mask is 0)

_PIECE = re.compile(r"\d+|.", re.DOTALL)
_DIGIT_PIECE = re.compile(r".", re.DOTALL)
NUMBER_FORMATS = ("tokens", "digits")


class Tokenizer:
    """number_format "tokens": a whole number is one token; "digits": one token per digit (character
    level; the digit tokens are the number tokens 0..9, so both formats share one vocabulary)."""

    def __init__(self, number_format: str = "tokens") -> None:
        if number_format not in NUMBER_FORMATS:
            raise ValueError(f"unknown number format {number_format!r}: use {' or '.join(NUMBER_FORMATS)}")
        self.number_format = number_format
        self.vocab: list[str] = [PAD] + list(TEXT_CHARS) + [str(n) for n in range(MAX_NUMBER + 1)]
        self.token_to_id: dict[str, int] = {t: i for i, t in enumerate(self.vocab)}
        self.pad_id = 0
        self.newline_id = self.token_to_id["\n"]

    def __len__(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> list[int]:
        ids = []
        for piece in (_PIECE if self.number_format == "tokens" else _DIGIT_PIECE).findall(text):
            if piece not in self.token_to_id:
                if piece.isdigit():
                    raise ValueError(f"number {piece} is outside the vocabulary (0..{MAX_NUMBER})")
                raise ValueError(f"character {piece!r} is not in the vocabulary")
            ids.append(self.token_to_id[piece])
        return ids

    def decode(self, ids) -> str:
        """Concatenate tokens. Two adjacent number tokens are joined by a space ("1","2" -> "1 2"), so a
        model cannot pass two numbers off as one ("12") to the strict answer parser; the task's formats
        never put numbers side by side, so for them encode and decode are exact inverses."""
        pieces, previous_number = [], False
        for i in ids:
            if i == self.pad_id:
                continue
            token = self.vocab[i]
            if previous_number and token.isdigit() and self.number_format == "tokens":
                pieces.append(" ")
            pieces.append(token)
            previous_number = token.isdigit()
        return "".join(pieces)

    def decode_tokens(self, ids) -> list[str]:
        return [self.vocab[i] for i in ids]

    def is_number(self, token_id: int) -> bool:
        return self.vocab[token_id].isdigit()

    def number_id(self, n: int) -> int:
        if not 0 <= n <= MAX_NUMBER:
            raise ValueError(f"number {n} is outside the vocabulary (0..{MAX_NUMBER})")
        return self.token_to_id[str(n)]
