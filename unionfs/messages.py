"""Error messages as the command line prints them: one line, whatever a path holds."""

from __future__ import annotations


def one_line(text: str) -> str:
    """TEXT with line breaks and other control characters shown escaped (a file name may hold
    a newline; the message must stay one line)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text)


def os_message(e: OSError) -> str:
    """An OSError as a command line says it: the reason and the file, without '[Errno N]'."""
    return f"{e.strerror or e}{f': {e.filename}' if e.filename else ''}"
