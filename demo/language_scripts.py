"""Which writing system a text's letters are in: is an answer in the language of its question?"""

from __future__ import annotations

import unicodedata

# Unicode blocks of each language's letters (for checking that a text is in its language's script).
SCRIPTS = {
    "latin": ((0x41, 0x5A), (0x61, 0x7A), (0xC0, 0x24F)),
    "han": ((0x4E00, 0x9FFF),),
    "kana": ((0x3040, 0x30FF),),
    "cyrillic": ((0x400, 0x4FF),),
    "arabic": ((0x600, 0x6FF),),
    "devanagari": ((0x900, 0x97F),),
    "bengali": ((0x980, 0x9FF),),
}
LANGUAGE_SCRIPTS = {"en": ("latin",), "fr": ("latin",), "es": ("latin",), "zh": ("han",), "ja": ("han", "kana"),
                    "ru": ("cyrillic",), "ar": ("arabic",), "ur": ("arabic",), "hi": ("devanagari",), "bn": ("bengali",)}


def letter_scripts(text: str) -> set[str]:
    """Names of the scripts of the letters in `text` ("other" for letters of none of them)."""
    found = set()
    for ch in text:
        if not ch.isalpha() and not unicodedata.category(ch).startswith("M"):  # M: Indic vowel signs
            continue
        cp = ord(ch)
        name = next((n for n, ranges in SCRIPTS.items() if any(lo <= cp <= hi for lo, hi in ranges)), "other")
        found.add(name)
    return found


def in_language_script(text: str, code: str) -> bool:
    """True if `text` has letters and all of them are in the script(s) of language `code`."""
    scripts = letter_scripts(text)
    return bool(scripts) and scripts <= set(LANGUAGE_SCRIPTS[code])
