"""The fixed vocabulary: lossless round trips, numbers as single tokens, loud errors on unknown input."""

import re

import numpy as np
import pytest

from nanocot.config import CorpusConfig, TaskConfig
from nanocot.corpus import corpus_text, generate_lines
from nanocot.ood import ood_splits
from nanocot.task import COT, DIRECT, ModularAddition, completion, prompt
from nanocot.tokenizer import MAX_NUMBER, Tokenizer, number_word


def _task_texts():
    task = ModularAddition(TaskConfig())
    rng = np.random.default_rng(0)
    problems = task.sample_train(rng, 200) + task.test_set(50)
    for split in ood_splits(task, 50).values():
        problems += split
    return [prompt(p, mode) + completion(p, mode) for p in problems for mode in (DIRECT, COT)]


def test_round_trip_task_prompts_and_completions(tok):
    """Every training/eval text must survive encode -> decode, else the model is trained on other text."""
    texts = _task_texts()
    assert any("-" in t and "+-" in t for t in texts), "negative OOD operands should be covered"
    for text in texts:
        assert tok.decode(tok.encode(text)) == text


def test_round_trip_corpus_lines(tok):
    """The pretraining corpus must tokenize losslessly (and without errors) line by line and as a whole."""
    lines = generate_lines(CorpusConfig(num_lines=500), TaskConfig())
    assert len(lines) == 500
    for line in lines:
        assert tok.decode(tok.encode(line)) == line
    text = corpus_text(CorpusConfig(num_lines=500), TaskConfig())
    assert tok.decode(tok.encode(text)) == text


@pytest.mark.parametrize("n", [0, 7, 12, 99, 100, MAX_NUMBER])
def test_numbers_are_single_tokens(tok, n):
    """'12' is the token twelve, never '1','2': the whole experimental design rests on this."""
    ids = tok.encode(str(n))
    assert ids == [tok.number_id(n)]
    assert tok.decode_tokens(ids) == [str(n)]
    assert tok.is_number(ids[0])


def test_expression_tokenization(tok):
    """A trace step is one token per number and per symbol."""
    ids = tok.encode("\n15+12=27-21=6;6\n")
    assert tok.decode_tokens(ids) == ["\n", "15", "+", "12", "=", "27", "-", "21", "=", "6", ";", "6", "\n"]
    assert ids[0] == tok.newline_id
    assert not tok.is_number(tok.token_to_id["+"])


def test_pad_is_id_zero_and_dropped_by_decode(tok):
    assert tok.pad_id == 0
    assert tok.decode([tok.pad_id] + tok.encode("1+2=3") + [tok.pad_id]) == "1+2=3"


@pytest.mark.parametrize("text, culprit", [("1+2=3A", "'A'"), ("a#b", "'#'"), ("café", "'é'"),
                                           ("x\ty", "'\\t'")])
def test_unknown_character_raises_naming_it(tok, text, culprit):
    """A silent <unk> would hide data bugs; the error must say which character is wrong."""
    with pytest.raises(ValueError) as info:
        tok.encode(text)
    assert culprit in str(info.value)


@pytest.mark.parametrize("number", [MAX_NUMBER + 1, 1234, 10**20])
def test_number_above_max_raises_naming_it(tok, number):
    with pytest.raises(ValueError) as info:
        tok.encode(f"3+{number}=5")
    assert str(number) in str(info.value)
    with pytest.raises(ValueError, match=str(number)):
        tok.number_id(number)


def test_number_id_rejects_negative(tok):
    with pytest.raises(ValueError):
        tok.number_id(-1)


def test_digits_format_spells_numbers_digit_by_digit():
    """The character-level number format must split every number into digits, share the vocabulary
    with the number-token format, and round-trip task strings exactly."""
    from nanocot.tokenizer import Tokenizer as Tok

    digits, tokens = Tok("digits"), Tok("tokens")
    text = "\n18+7+12+5%21:18+7=25-21=4,4+12=16,16+5=21-21=0;0\n"
    ids = digits.encode(text)
    assert digits.decode(ids) == text
    assert digits.vocab == tokens.vocab
    assert len(ids) > len(tokens.encode(text))
    assert digits.encode("125") == [digits.token_to_id["1"], digits.token_to_id["2"], digits.token_to_id["5"]]
    with pytest.raises(ValueError):
        Tok("roman")


def test_number_words_are_one_or_two_tokens(tok):
    """The trace's second language must be as readable as the first: every number word 0..99 is one token
    ('seven') or two ('twenty', ' seven'), as a byte-pair tokenizer would make them, with or without the
    space before it."""
    for n in range(100):
        for text in (number_word(n), " " + number_word(n)):
            ids = tok.encode(text)
            assert len(ids) == (1 if n <= 20 or n % 10 == 0 else 2), (text, tok.decode_tokens(ids))
            assert tok.decode(ids) == text
    for word in ("plus", "minus", "is", "then", "negative"):
        assert len(tok.encode(word)) == 1 and len(tok.encode(" " + word)) == 1


def test_a_translated_trace_is_about_as_long_as_the_original(tok):
    """A whole trace in words fits the context: at most twice the tokens of its digits, where a letter per
    token made it about three times as long."""
    import random

    from nanocot.paraphrase import to_words

    task = ModularAddition(TaskConfig())
    for problem in task.test_set(200):
        body = completion(problem, COT).split(";")[0] + ";"
        words = to_words(body, random.Random(0))
        assert len(tok.encode(words)) <= 2 * len(tok.encode(body)), words
        assert len(tok.encode(prompt(problem, COT) + words + "99\n")) <= 96


def test_word_tokens_are_whole_words_only(tok):
    """Only a whole word is a word token: 'is' inside 'this' or 'island', or 'ten' inside 'often', is spelled
    a letter per token, so no word of the prose is cut into pieces that mean something else."""
    assert tok.decode_tokens(tok.encode("this island")) == list("this") + [" "] + list("island")
    assert tok.decode_tokens(tok.encode("often ten")) == list("often") + [" ten"]
    assert tok.decode_tokens(tok.encode("eight plus 7 is fifteen,then")) == [
        "eight", " plus", " ", "7", " is", " fifteen", ",", "then"]
    digits = Tokenizer("digits")
    assert digits.decode_tokens(digits.encode("12 is twelve")) == ["1", "2", " is", " twelve"]


def test_number_words_spell_every_number_below_a_hundred():
    assert [number_word(n) for n in (0, 13, 20, 21, 30, 47, 99)] == [
        "zero", "thirteen", "twenty", "twenty one", "thirty", "forty seven", "ninety nine"]
    assert len({number_word(n) for n in range(100)}) == 100
    with pytest.raises(ValueError):
        number_word(100)


def test_the_corpus_teaches_the_second_language():
    """The pretraining text has what web text has for a second language: a dictionary both ways, arithmetic
    in words, mixed lines, and worked one-step problems whose step is written in words."""
    lines = generate_lines(CorpusConfig(num_lines=4000), TaskConfig())
    has = lambda pattern: sum(bool(re.search(pattern, line)) for line in lines) / len(lines)
    assert 0.005 < has(r"^[a-z ]+ is \d+\.$") and 0.005 < has(r"^\d+ is [a-z ]+\.$")
    assert 0.01 < has(r"^[a-z ]+ (plus|minus) [a-z ]+ is [a-z ]+\.$")
    assert 0.005 < has(r"^(\d+ (plus|minus) [a-z ]+|[a-z ]+ (plus|minus) \d+) is ")
    assert 0.005 < has(r", then [a-z ]+ plus")
    assert 0.03 < has(r"^\d+\+\d+%\d+:[a-z ]+;\d+$") < 0.1
