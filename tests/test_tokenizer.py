"""The fixed vocabulary: lossless round trips, numbers as single tokens, loud errors on unknown input."""

import numpy as np
import pytest

from nanocot.config import CorpusConfig, TaskConfig
from nanocot.corpus import corpus_text, generate_lines
from nanocot.ood import ood_splits
from nanocot.task import COT, DIRECT, ModularAddition, completion, prompt
from nanocot.tokenizer import MAX_NUMBER


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
