"""token_span: words, phrases and regexes → token positions; sub-word safe; clear errors."""

import re

import pytest

from reprolib.conditioning import TextConditioning
from reprolib.tokens import SpanError, token_span


@pytest.fixture
def cond(sd15):
    return TextConditioning(sd15)


def words(toks, pos):
    """The prompt text the positions cover, for readable assertions."""
    return [toks.text[toks.offsets[i][0] : toks.offsets[i][1]] for i in pos]


def test_sub_words_with_real_bpe(cond, bpe):
    # "photorealistic" is two CLIP tokens; both belong to the word, neighbours do not
    toks = cond.tokenize("a photorealistic astronaut riding a horse", bpe)
    pos = token_span(toks, "photorealistic")
    assert len(pos) > 1 and pos == list(range(pos[0], pos[-1] + 1))
    assert "".join(words(toks, pos)) == "photorealistic"
    assert words(toks, token_span(toks, "astronaut")) == ["astronaut"]
    assert words(toks, token_span(toks, "riding a horse")) == ["riding", "a", "horse"]


def test_sub_words_byte_fallback(cond):
    # the tiny word tokenizer spells unknown words in bytes: many tokens, all of them returned
    toks = cond.tokenize("an astronaut and a red circle")
    pos = token_span(toks, "astronaut")
    assert len(pos) > 1 and "".join(words(toks, pos)) == "astronaut"
    assert words(toks, token_span(toks, "circle")) == ["circle"]


def test_case_insensitive(cond, bpe):
    toks = cond.tokenize("An ASTRONAUT on Mars", bpe)
    assert words(toks, token_span(toks, "astronaut")) == ["ASTRONAUT"]
    assert words(toks, token_span(toks, "MARS")) == ["Mars"]


def test_punctuation_is_not_part_of_the_word(cond, bpe):
    toks = cond.tokenize("a red circle, a blue square.", bpe)
    assert words(toks, token_span(toks, "circle")) == ["circle"]
    assert words(toks, token_span(toks, "square")) == ["square"]
    assert words(toks, token_span(toks, "blue   square")) == ["blue", "square"]  # phrases: any spacing


def test_every_match(cond, bpe):
    toks = cond.tokenize("a red circle and a red square", bpe)
    pos = token_span(toks, "red")
    assert len(pos) == 2 and words(toks, pos) == ["red", "red"]


def test_missing_word_shows_tokens(cond, bpe):
    toks = cond.tokenize("a red circle", bpe)
    with pytest.raises(SpanError, match="does not occur") as e:
        token_span(toks, "triangle")
    assert "circle" in str(e.value) and "1:" in str(e.value)  # the token table is in the message


def test_whole_words_only_and_partial_tokens(cond, bpe):
    toks = cond.tokenize("a woman and a man", bpe)
    # a plain word matches whole words: "man" is the man, not the end of "woman"
    assert words(toks, token_span(toks, "man")) == ["man"]
    toks = cond.tokenize("a woman", bpe)
    with pytest.raises(SpanError, match="does not occur"):
        token_span(toks, "man")
    # a regex (asked for) may match inside a word; half a token cannot be edited, so it is refused
    with pytest.raises(SpanError, match="only part of token"):
        token_span(toks, re.compile("(man)"))
    with pytest.raises(SpanError, match="only part of token"):
        token_span(toks, "wo(?=man)", regex=True)


def test_patterns_are_words_unless_a_regex_is_asked_for(cond, bpe):
    toks = cond.tokenize("a (red) circle and a red circle", bpe)
    # "(red) circle" means those characters, not the regex that would match the plain "red circle"
    assert words(toks, token_span(toks, "(red) circle")) == ["(", "red", ")", "circle"]
    literal = token_span(toks, "(red) circle")
    regex = token_span(toks, re.compile(r"(red) circle"))  # the group: the plain "red" before "circle"
    assert words(toks, regex) == ["red"] and regex[0] > max(literal)
    toks = cond.tokenize("a red circle", bpe)
    with pytest.raises(SpanError, match="taken literally"):
        token_span(toks, "red|blue")


def test_regex_group_selects_its_characters(cond, bpe):
    toks = cond.tokenize("an old man and a young man", bpe)
    assert words(toks, token_span(toks, re.compile(r"young (man)"))) == ["man"]
    assert token_span(toks, r"young (man)", regex=True) == [token_span(toks, "man")[1]]


def test_specials_never_returned(sd21):
    # sd21's tokenizer pads with "!": padding "!" must never match, a "!" in the text must
    cond = TextConditioning(sd21)
    toks = cond.tokenize("a red circle!")
    assert toks.special[0] and toks.special[-1] and toks.tokens[-1] == "!"
    assert words(toks, token_span(toks, "!")) == ["!"]
    every = token_span(toks, re.compile(r".+"))
    assert every and not any(toks.special[i] for i in every)
    assert "".join(words(toks, every)) == "aredcircle!"


def test_truncated_word(cond):
    long = " ".join(["red"] * 200) + " circle"
    toks = cond.tokenize(long)
    with pytest.raises(SpanError, match="truncated"):
        token_span(toks, "circle")
