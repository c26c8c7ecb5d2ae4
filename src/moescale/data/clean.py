"""Text cleaning: bytes to text, Project Gutenberg boilerplate removed, whitespace normalised.

Every document, bundled or the user's, goes through `normalize_whitespace`; the bundled
Gutenberg texts go through `clean_text`, which strips the Gutenberg header, footer and licence
blocks and verse line numbers first.
"""

from __future__ import annotations

import re
import unicodedata

from moescale.data.documents import EOS


def decode_text(data: bytes) -> str:
    """UTF-8 where the bytes are valid UTF-8, else Latin-1 (which decodes any bytes)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


_GUT_START = re.compile(
    r"^[ \t]*(?:\*{3}[ \t]*START OF (?:THE|THIS) PROJECT GUTENBERG[^\n]*"
    r"|\*END\*THE SMALL PRINT![^\n]*)$",
    re.IGNORECASE | re.MULTILINE,
)
_GUT_END = re.compile(
    r"^[ \t]*(?:\*{3}[ \t]*END OF (?:THE|THIS) PROJECT GUTENBERG"
    r"|End of (?:the )?Project Gutenberg|End of Project Gutenberg's)[^\n]*$",
    re.IGNORECASE | re.MULTILINE,
)
_GUT_PRODUCED = re.compile(
    r"\A\s*(?:Produced by|This e-?text was prepared by|E-text prepared by)[^\n]*(?:\n[^\n]+)*",
    re.IGNORECASE,
)
_WLI_BLOCK = re.compile(r"<<[^<>]*ELECTRONIC VERSION[^<>]*>>", re.IGNORECASE)


def strip_gutenberg(text: str) -> str:
    """Remove Project Gutenberg headers, footers and licence blocks, keep the work itself."""
    start = _GUT_START.search(text)
    if start:
        text = text[start.end() :]
    end = _GUT_END.search(text)
    if end:
        text = text[: end.start()]
    text = _GUT_PRODUCED.sub("", text)
    return _WLI_BLOCK.sub("", text)


_SPACES = re.compile(r"[ \t\f\v\u00a0\u2000-\u200a\u202f\u205f\u3000]+")
_MANY_NEWLINES = re.compile(r"\n{3,}")


def normalize_whitespace(text: str) -> str:
    """NFC, Unix newlines, single spaces, no trailing spaces, at most one blank line in a row.

    Leading indentation is dropped too: in these texts it is typesetting, not content, and it
    would cost a small model capacity for nothing.
    """
    text = unicodedata.normalize("NFC", text.replace("\ufeff", ""))
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = text.replace(EOS, " ")  # the separator must never occur inside a document
    lines = (_SPACES.sub(" ", line).strip() for line in text.split("\n"))
    return _MANY_NEWLINES.sub("\n\n", "\n".join(lines)).strip()


_LINE_NUMBER = re.compile(r"[ \t]{4,}\d{1,4}[ \t]*$", re.MULTILINE)


def clean_text(text: str) -> str:
    """Gutenberg stripping, verse line numbers at line ends removed, whitespace normalised."""
    return normalize_whitespace(_LINE_NUMBER.sub("", strip_gutenberg(text)))
