"""Text cleaning: Gutenberg boilerplate and whitespace."""

from __future__ import annotations

from moescale.data.clean import clean_text, normalize_whitespace
from moescale.data.documents import EOS

GUTENBERG_SAMPLE = """\ufeffThe Project Gutenberg EBook of A Tiny Play, by Somebody

This eBook is for the use of anyone anywhere at no cost and with
almost no restrictions whatsoever.

*** START OF THIS PROJECT GUTENBERG EBOOK A TINY PLAY ***




Produced by A. Volunteer and the Online Distributed
Proofreading Team

A TINY PLAY\r
\r
ACT I.   Scene 1.\t  A heath.

  <<THIS ELECTRONIC VERSION OF THE COMPLETE WORKS IS COPYRIGHT 1990-1993 BY
  WORLD LIBRARY, INC.>>

Enter   the king.   \t

KING.  Now is the winter of our discontent        10



[Exeunt.]

End of the Project Gutenberg EBook of A Tiny Play

*** END OF THIS PROJECT GUTENBERG EBOOK A TINY PLAY ***

Section 1. General Terms of Use and Redistributing Project Gutenberg-tm
"""


def test_gutenberg_header_licence_and_footer_are_stripped() -> None:
    text = clean_text(GUTENBERG_SAMPLE)
    assert text.startswith("A TINY PLAY\n\nACT I. Scene 1. A heath.")
    assert text.endswith("[Exeunt.]")
    for junk in ("Gutenberg", "Produced by", "ELECTRONIC VERSION", "eBook", "\ufeff", "\r", "\t"):
        assert junk not in text
    assert "KING. Now is the winter of our discontent\n" in text  # verse number dropped


def test_normalize_whitespace() -> None:
    raw = "  a\u00a0 b\t\tc  \r\n\r\n\r\n\r\nd   \n\n\n e\n\n"
    assert normalize_whitespace(raw) == "a b c\n\nd\n\ne"
    # the document separator can never survive inside a document
    assert EOS not in normalize_whitespace(f"x {EOS} y")
