"""Text from untrusted sources made safe for a terminal or a log line (docs/security.md)."""

from __future__ import annotations

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def printable(text: object) -> str:
    """str(TEXT) with everything a terminal could act on escaped, on one line.

    File names in datadir are chosen by whoever can write there: an escape sequence in one
    would otherwise reach the administrator's terminal through `status`, and a newline would
    forge a second log line. Control characters (C0, DEL, C1), format characters such as
    the bidirectional overrides, separators other than the space, and lone surrogates
    (undecodable bytes of a file name, shown as the byte) are escaped Python-style; the
    backslash is doubled so that an escape cannot be faked. Printable text, non-ASCII
    letters included, is unchanged.
    """
    text = str(text)
    if text.isprintable() and "\\" not in text:
        return text  # the common case: one C-level scan
    return "".join(_escape(c) for c in text)


def _escape(char: str) -> str:
    if char in _NAMED:
        return _NAMED[char]
    if char.isprintable():
        return char
    # Injective, so that no name can pass for another on screen: \xNN is an ASCII control
    # below 0x80 and a raw byte (not UTF-8, surrogate-escaped) from 0x80; every other
    # character is \uNNNN or \UNNNNNNNN.
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:
        return f"\\x{code - 0xDC00:02x}"
    if code < 0x80:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"
