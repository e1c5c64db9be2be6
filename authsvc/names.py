"""Usernames compared as people read them: one canonical form per name, before uniqueness.

The original compared usernames byte for byte, so ``alice`` in fullwidth letters
(U+FF41...), ``Alice`` and ``alice\\u200b`` (a zero-width space) were three users that look
like one, and a look-alike could be registered next to a real user. We follow PRECIS
(RFC 8264) and its UsernameCaseMapped profile (RFC 8265 3.3) with two deliberate departures:

- *fold* (`fold_username`, the lookup key, total): NFKC, full case folding, NFKC again (case
  folding can un-normalise, e.g. U+0130 gives ``i`` + U+0307), then drop invisible code
  points: every format character (Cf: zero-width space and joiners, bidi controls, soft
  hyphen, BOM) and the rest of Unicode's Default_Ignorable_Code_Point set (variation
  selectors, Hangul fillers, ...). RFC 8265 asks for width mapping + toLowerCase + NFC; NFKC
  is stricter (it also folds compatibility forms such as fullwidth letters or superscript digits) and ``casefold``
  folds ``ß``/``ẞ`` to ``ss``, which only ever merges names, never splits them. PRECIS
  refuses ZWJ/ZWNJ outside their scripts' contexts; dropping them merges, which is the safe
  direction for a uniqueness key.
- *validate* (`canonical_username`, at signup): the folded name must be 1-64 characters of
  the IdentifierClass (RFC 8264 9.1): letters, combining marks (not first), decimal digits and
  printable ASCII. Spaces, controls, unassigned and private-use code points, and non-ASCII
  symbols and punctuation (U+2215 DIVISION SLASH passes for ``/``) are refused, with the code point
  named.

Signin only folds: users created before this rule existed may hold names that no longer
validate (an emoji) and must still sign in. What is left alone: confusables across scripts
(Cyrillic U+0430 vs Latin ``a``) need UTS #39 skeletons, and the bidi rule (RFC 5893).
"""

from __future__ import annotations

import unicodedata

MAX_USERNAME_CHARS = 64
# Folding expands at most ~18x (NFKC of U+FDFA); refuse absurd input before doing it.
MAX_RAW_USERNAME_CHARS = 4 * MAX_USERNAME_CHARS

# Default_Ignorable_Code_Point (DerivedCoreProperties.txt, Unicode 15) outside category Cf,
# which is dropped whole.
_IGNORABLE_RANGES = (
    (0x034F, 0x034F),  # combining grapheme joiner
    (0x115F, 0x1160),  # Hangul choseong/jungseong fillers
    (0x17B4, 0x17B5),  # Khmer inherent vowels
    (0x180B, 0x180F),  # Mongolian free variation selectors
    (0x3164, 0x3164),  # Hangul filler
    (0xFE00, 0xFE0F),  # variation selectors
    (0xFFA0, 0xFFA0),  # halfwidth Hangul filler
    (0xFFF0, 0xFFF8),  # unassigned specials
    (0x1BCA0, 0x1BCA3),  # shorthand format controls
    (0x1D173, 0x1D17A),  # musical symbol format controls
    (0xE0000, 0xE0FFF),  # tags and variation selectors supplement
)
_ALLOWED_CATEGORIES = frozenset({"Lu", "Ll", "Lt", "Lm", "Lo", "Mn", "Mc", "Nd"})


class BadUsername(ValueError):
    """A username we refuse to register; the message names the offending code point."""


def _is_invisible(ch: str) -> bool:
    if unicodedata.category(ch) == "Cf":
        return True
    cp = ord(ch)
    return any(lo <= cp <= hi for lo, hi in _IGNORABLE_RANGES)


def fold_username(raw: str) -> str:
    """The lookup key of ``raw``: NFKC, case-folded, invisible code points dropped. May be
    empty (a name made only of invisible characters), which matches no user."""
    if len(raw) > MAX_RAW_USERNAME_CHARS:
        return ""
    name = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", raw).casefold())
    return "".join(ch for ch in name if not _is_invisible(ch))


def _describe(ch: str) -> str:
    return f"U+{ord(ch):04X} {unicodedata.name(ch, 'unnamed')}"


def canonical_username(raw: str) -> str:
    """The canonical form of a new username, or `BadUsername` saying why not."""
    if len(raw) > MAX_RAW_USERNAME_CHARS:
        raise BadUsername(f"username longer than {MAX_RAW_USERNAME_CHARS} characters")
    name = fold_username(raw)
    if not name:
        raise BadUsername("username is empty once invisible characters are removed")
    if len(name) > MAX_USERNAME_CHARS:
        raise BadUsername(f"username longer than {MAX_USERNAME_CHARS} characters")
    if unicodedata.category(name[0]).startswith("M"):
        raise BadUsername(f"username may not start with the combining mark {_describe(name[0])}")
    for ch in name:
        if "\x21" <= ch <= "\x7e":
            continue
        if unicodedata.category(ch) not in _ALLOWED_CATEGORIES:
            raise BadUsername(f"username may not contain {_describe(ch)}")
    return name
