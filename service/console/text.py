"""How the console shows stored text, so that what an investigator reads is what is stored.

Uploads put any text in names, codes, catalogue codes, lots and notes, including
right-to-left overrides and invisible characters (found by a probe: a catalogue code
holding U+202E showed as the real one, and a name's unclosed U+202E turned the "(P3)"
after it into "(3P)"). So:

- every stored value is *isolated*: in HTML inside ``<bdi>`` (:func:`bdi`, :func:`ident`),
  in plain text (SVG labels, tooltips, the page's title) between U+2068 FIRST STRONG
  ISOLATE and U+2069 POP DIRECTORY ISOLATE (:func:`isolated`); whatever direction
  characters it holds stop at its end;
- an *identifier* (a code, a catalogue code, a lot, a product, organisation, settlement
  or key id, and the flags' evidence built from them) shows its invisible, control and
  direction characters as escapes (``\\u202e``) and a backslash as ``\\\\``
  (:func:`visible`), so two different identifiers never look the same. Names and notes
  are people's text: isolated, shown as written.
"""

from __future__ import annotations

from markupsafe import Markup

# characters that print nothing, or nothing telling, though Unicode files them as
# letters or marks: fillers and variation selectors (default-ignorable code points)
_IGNORABLE = frozenset(
    (0x034F, 0x115F, 0x1160, 0x17B4, 0x17B5, 0x3164, 0xFFA0, *range(0x180B, 0x1810), *range(0xFE00, 0xFE10))
) | frozenset(range(0xE0100, 0xE01F0))


def _hidden(char: str) -> bool:
    """Would the reader not see this character for what it is? What is not printable
    (controls, formats such as direction marks and zero-width characters, unassigned and
    private ones, separators other than the plain space: as ``core.events``'s
    identifiers refuse them), and the default-ignorable fillers."""
    return not char.isprintable() or ord(char) in _IGNORABLE


def visible(value: object) -> str:
    """An identifier as text whose every character shows: hidden ones as ``\\uXXXX``
    (``\\UXXXXXXXX`` past the first plane), a backslash doubled."""
    out = []
    for char in str(value):
        if char == "\\":
            out.append("\\\\")
        elif _hidden(char):
            out.append(f"\\u{ord(char):04x}" if ord(char) <= 0xFFFF else f"\\U{ord(char):08x}")
        else:
            out.append(char)
    return "".join(out)


def isolated(value: object) -> str:
    """Plain text kept apart from the text around it (the bidi algorithm's isolate)."""
    return f"\u2068{value}\u2069"


def bdi(value: object) -> Markup:
    """People's text (a name, a note, a reason) in HTML: escaped, isolated."""
    return Markup("<bdi>{}</bdi>").format(value)


def ident(value: object) -> Markup:
    """An identifier in HTML: escaped, isolated, its hidden characters shown."""
    return bdi(visible(value))


def evidence(value: object) -> Markup:
    """A flag's evidence (its ``detail``) in HTML: an identifier (:func:`ident`), and
    written in English by the rules that raise flags, so marked ``lang="en"``: on a
    Chinese page a screen reader reads it with an English voice, and the reader knows
    it is the stored text, not a translation."""
    return Markup('<bdi lang="en">{}</bdi>').format(visible(value))


FILTERS = {"bdi": bdi, "ident": ident, "visible": visible, "isolated": isolated, "evidence": evidence}
