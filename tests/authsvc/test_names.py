"""Username folding and validation (RFC 8265 UsernameCaseMapped, with NFKC and case folding)."""

from __future__ import annotations

import re

import pytest

from authsvc.names import MAX_USERNAME_CHARS, BadUsername, canonical_username, fold_username


@pytest.mark.parametrize(
    "look_alike",
    [
        "Alice",
        "ALICE",
        "\uff41\uff4c\uff49\uff43\uff45",  # fullwidth
        "\uff21lice",  # fullwidth capital A
        "alice\u200b",  # zero-width space
        "al\u00adice",  # soft hyphen
        "\ufeffalice",  # byte order mark
        "ali\u200dce",  # zero-width joiner
        "alice\ufe0f",  # variation selector
        "alic\u0065\u034f",  # combining grapheme joiner
        "\u202ealice",  # right-to-left override
        "alice\u3164",  # Hangul filler
        "alice\U000e0041",  # tag character
    ],
)
def test_look_alikes_fold_to_one_name(look_alike: str) -> None:
    assert fold_username(look_alike) == "alice"
    assert canonical_username(look_alike) == "alice"


def test_folding_is_idempotent_and_merges_case_variants() -> None:
    assert fold_username("Stra\u00dfe") == fold_username("STRASSE") == "strasse"
    assert fold_username("\u0130stanbul") == "i\u0307stanbul"  # casefold un-normalises; NFKC again
    assert fold_username("\u212aelvin") == "kelvin"  # KELVIN SIGN
    assert fold_username("x\u00b2") == "x2"
    for name in ("Alice", "Stra\u00dfe", "\u0130stanbul", "\u00e9l\u00e8ve", "\u5f20\u4f1f"):
        once = fold_username(name)
        assert fold_username(once) == once and canonical_username(once) == once


def test_composed_and_decomposed_are_one_name() -> None:
    assert (
        fold_username("e\u0301l\u00e8ve") == fold_username("\u00e9l\u00e8ve") == "\u00e9l\u00e8ve"
    )


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("al ice", "U+0020 SPACE"),
        ("al\u00a0ice", "U+0020 SPACE"),  # no-break space folds to a space
        ("al\u3000ice", "U+0020 SPACE"),  # ideographic space too
        ("al\tice", "U+0009"),
        ("al\x7fice", "U+007F"),
        ("ali\u2215ce", "DIVISION SLASH"),
        ("\u2603", "SNOWMAN"),
        ("ali\ue000ce", "U+E000"),  # private use
        ("ali\u0378ce", "U+0378"),  # unassigned
        ("\u0301alice", "combining mark"),
        ("\u200b\u200d", "empty"),
        ("", "empty"),
        ("a" * (MAX_USERNAME_CHARS + 1), "longer"),
        ("a" * 10_000, "longer"),
    ],
)
def test_refused_names_say_why(raw: str, why: str) -> None:
    with pytest.raises(BadUsername, match=re.escape(why)):
        canonical_username(raw)


def test_ascii_punctuation_and_other_scripts_are_fine() -> None:
    for name in ("e2e-user_1.test@x", "\u0430\u043b\u0438\u0441\u0430", "\u5f20\u4f1f", "z" * 64):
        assert canonical_username(name) == name


def test_fold_never_raises() -> None:
    assert fold_username("a" * 10_000) == ""  # too long to be anyone: matches nobody
    assert fold_username("\u2603 x") == "\u2603 x"  # old names that no longer validate still fold
