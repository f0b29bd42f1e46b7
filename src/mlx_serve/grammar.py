"""English for messages that insert a word: ``an embedding model``, not ``a embedding model``."""

from __future__ import annotations

__all__ = ["article", "with_article"]

#: Letters whose name starts with a vowel sound ("ef", "es", "em"): an initialism starting
#: with one takes "an" (an stt model, an MLX model; a TTS model).
_VOWEL_SOUND_LETTERS = frozenset("aefhilmnorsx")
_VOWELS = frozenset("aeiou")


def article(word: str) -> str:
    """``an`` before a vowel sound, else ``a``. Words without a vowel (``stt``, ``tts``) are
    read letter by letter, so their first letter's name decides."""
    text = word.strip().lower()
    if not text:
        return "a"
    if not _VOWELS.intersection(text):
        return "an" if text[0] in _VOWEL_SOUND_LETTERS else "a"
    return "an" if text[0] in _VOWELS else "a"


def with_article(word: str) -> str:
    """``embedding`` -> ``an embedding``, ``text`` -> ``a text``."""
    return f"{article(word)} {word}"
