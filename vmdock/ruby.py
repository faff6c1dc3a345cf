"""Python values as Ruby literals, for the Vagrantfile.

A Vagrantfile is Ruby.  Every value that comes from a lab file reaches it
through ``ruby()``: strings become double-quoted literals with ``\\``, ``"``
and ``#`` escaped (so ``#{...}`` cannot interpolate) and every control or
non-printing character written as ``\\u{...}``, so no value can end its
literal, start a comment, or stop the parser.
"""
from __future__ import annotations

_SIMPLE = {"\\": "\\\\", '"': '\\"', "#": "\\#", "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def ruby_string(value: str) -> str:
    out = ['"']
    for ch in value:
        if ch in _SIMPLE:
            out.append(_SIMPLE[ch])
        elif ch.isprintable() and ch not in "\u2028\u2029":
            out.append(ch)
        elif "\udc80" <= ch <= "\udcff":  # a non-UTF-8 byte of a path or env value (surrogateescape)
            out.append(f"\\x{ord(ch) - 0xDC00:02x}")
        elif "\ud800" <= ch <= "\udfff":  # `\u{d800}` is a Ruby syntax error
            raise ValueError(f"cannot render the lone surrogate {ch!r} as a Ruby literal")
        else:
            out.append(f"\\u{{{ord(ch):x}}}")
    out.append('"')
    return "".join(out)


def ruby(value) -> str:
    """Render a Python value as a Ruby literal (str, int, float, bool, None, list, dict)."""
    if value is None:
        return "nil"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"cannot render {value!r} as a Ruby literal")
        return repr(float(value))
    if isinstance(value, str):
        return ruby_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(ruby(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{ruby(str(k))} => {ruby(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot render {type(value).__name__} as a Ruby literal")
