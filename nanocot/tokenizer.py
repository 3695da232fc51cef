"""A fixed vocabulary: single characters for text, whole numbers 0..MAX_NUMBER as single tokens, and whole
words for the trace language's words.

- Why numbers as tokens: each trace step becomes one lookup (`15+12=27`), sequences get short, and
  depth alone then decides whether a model can answer directly (an early calibration run); with one
  token per digit a one-layer model could barely run a trace (docs/LOG.md, 2026-11-26).
- A run of digits is always one number token (greedy, longest run), so "12" is the token for twelve,
  never '1' then '2'. A number above MAX_NUMBER, or any character outside the vocabulary, is an error
  that names the culprit: silent <unk> tokens hide data bugs.
- Why word tokens: the trace has a second language, English ("twenty seven plus five is thirty two"), and a
  translation test only measures steganography if the model can read that language as well as digits. Any
  real tokenizer gives a frequent word like "twenty" one token; spelled a letter per token, a number is ~12
  tokens and a translated trace overflows the context (docs/LOG.md, 2026-12-03). So the number words, the
  sign word "negative" and the operator words are tokens, each bare and with the space before it
  (" seven"), as byte-pair tokenizers learn them: "twenty seven" is two tokens. Text is first cut into
  pieces (a run of digits, a word with its leading space, or one character), as GPT-2 does; a piece that is
  a known word is one token, any other word is spelled a letter per token.
- The vocabulary is fixed by this file, not learned, so every checkpoint of every run shares it; a
  checkpoint stores it and loading refuses a mismatch.
"""

import re

MAX_NUMBER = 199
TEXT_CHARS = "\n abcdefghijklmnopqrstuvwxyz.,:;?!'+-=%*()"
NUMBER_WORDS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety"
).split()
OPERATOR_WORDS = ("negative", "plus", "minus", "is", "then")
WORDS = tuple(NUMBER_WORDS) + OPERATOR_WORDS


def number_word(n: int) -> str:
    """English words for 0..99 ('twenty seven'): the trace's second language for numbers."""
    if not 0 <= n <= 99:
        raise ValueError(f"{n} has no number word here (0..99)")
    if n <= 20 or n % 10 == 0:
        return NUMBER_WORDS[n if n <= 20 else 18 + n // 10]
    return f"{number_word(n - n % 10)} {NUMBER_WORDS[n % 10]}"


PAD = "<pad>"  # id 0: fills short rows of a batch, never predicted (its loss mask is 0)

_PIECE = re.compile(r"\d+| ?[a-z]+|.", re.DOTALL)
_DIGIT_PIECE = re.compile(r"\d| ?[a-z]+|.", re.DOTALL)
NUMBER_FORMATS = ("tokens", "digits")


class Tokenizer:
    """number_format "tokens": a whole number is one token; "digits": one token per digit (character
    level; the digit tokens are the number tokens 0..9, so both formats share one vocabulary)."""

    def __init__(self, number_format: str = "tokens") -> None:
        if number_format not in NUMBER_FORMATS:
            raise ValueError(f"unknown number format {number_format!r}: use {' or '.join(NUMBER_FORMATS)}")
        self.number_format = number_format
        words = [w for word in WORDS for w in (word, " " + word)]
        self.vocab: list[str] = [PAD] + list(TEXT_CHARS) + [str(n) for n in range(MAX_NUMBER + 1)] + words
        self.token_to_id: dict[str, int] = {t: i for i, t in enumerate(self.vocab)}
        self.pad_id = 0
        self.newline_id = self.token_to_id["\n"]

    def __len__(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> list[int]:
        ids = []
        for piece in (_PIECE if self.number_format == "tokens" else _DIGIT_PIECE).findall(text):
            if piece in self.token_to_id:
                ids.append(self.token_to_id[piece])
            elif piece.isdigit():
                raise ValueError(f"number {piece} is outside the vocabulary (0..{MAX_NUMBER})")
            else:  # a word without a token of its own, spelled a letter per token; or an unknown character
                ids.extend(self._character(c) for c in piece)
        return ids

    def _character(self, c: str) -> int:
        if c not in self.token_to_id:
            raise ValueError(f"character {c!r} is not in the vocabulary")
        return self.token_to_id[c]

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
