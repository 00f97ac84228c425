"""The words the smoke datasets are made of and the smoke tokenizers are trained on, and the sentences made of them.

A closed vocabulary keeps the tokenizers tiny (a SentencePiece model of 80 pieces, a byte-level BPE of 438 tokens)
while every word of the data is a token or two, so sequences stay short. The classes are learnable from the words:
a sentence carries two mood words (POSITIVE or NEGATIVE), a pair that "agrees" shares its mood and says "same".
The tests' fixtures (tests/fixtures) are made of the same words and sentences.
"""

from __future__ import annotations

import random

POSITIVE = ["good", "great", "happy", "love", "nice", "fine"]
NEGATIVE = ["bad", "awful", "sad", "hate", "poor", "ugly"]
NEUTRAL = ["car", "phone", "day", "movie", "food", "road", "city", "book"]
FILLER = ["the", "a", "is", "was", "this", "my", "it", "very", "so", "and", "of", "in", "what", "who", "where"]
FILLER += ["did", "to"]
NAMES = ["paris", "london", "rome", "alice", "bob", "carol", "1998", "2004", "blue", "red"]
PUNCTUATION = [".", "?"]  # the SQuAD contexts' and questions' (squad.py)
WORDS = POSITIVE + NEGATIVE + NEUTRAL + FILLER + NAMES + ["café", "not", "same", "different"]


def sentence(rng: random.Random, mood: list[str], n: int = 6) -> str:
    """n filler / neutral words with two words of `mood` inserted at random places."""
    words = [rng.choice(FILLER + NEUTRAL) for _ in range(n)]
    for _ in range(2):
        words.insert(rng.randrange(len(words) + 1), rng.choice(mood))
    return " ".join(words)


def pairs(rng: random.Random, n: int):
    """n (sentence1, sentence2, same) where `same` (every other pair) pairs share their mood words."""
    for i in range(n):
        same = i % 2 == 0
        a_mood = POSITIVE if rng.random() < 0.5 else NEGATIVE
        b_mood = a_mood if same else (NEGATIVE if a_mood is POSITIVE else POSITIVE)
        yield sentence(rng, a_mood), sentence(rng, b_mood) + (" same" if same else " different"), same


def tokenizer_lines(repeat: int = 4) -> list[str]:
    """Training text for the smoke tokenizers: every rotation of the word list `repeat` times (each word after a
    space), then each word and punctuation mark on its own line (as it comes first in a text)."""
    return [" ".join(WORDS[i:] + WORDS[:i] + PUNCTUATION) for i in range(len(WORDS))] * repeat + WORDS + PUNCTUATION
