"""The citation convention of README.md and docs/ (`mistudy.report.results_page.CITATION_HELP`), as the docs test
reads it: blocks of lines cited from a generated table, and measured numbers typed outside them."""

from __future__ import annotations

import re

_OPEN = re.compile(r"^<!--\s*table:\s*(\S+)\s*-->\s*$")
_CLOSE = re.compile(r"^<!--\s*/table\s*-->\s*$")
NOT_A_RESULT = "<!-- not a result -->"
# a measured number: three or more decimals (0.543, -0.323, +0.0490) or an interval of two numbers [a, b]
_RESULT_NUMBER = re.compile(r"(?<![\w.])[−+-]?\d+\.\d{3,}(?![\w])|\[\s*[−+-]?\d*\.?\d+\s*,\s*[−+-]?\d*\.?\d+\s*\]")


def cited_blocks(text: str) -> list[tuple[int, str, list[str]]]:
    """The citation blocks of a Markdown text: (line number of the opening marker, cited path, the lines between)."""
    blocks, current = [], None
    for i, line in enumerate(text.splitlines(), 1):
        if current is None:
            m = _OPEN.match(line.strip())
            if m:
                current = (i, m.group(1), [])
            elif _CLOSE.match(line.strip()):
                raise ValueError(f"line {i}: <!-- /table --> without an opening <!-- table: FILE -->")
        elif _CLOSE.match(line.strip()):
            blocks.append(current)
            current = None
        elif _OPEN.match(line.strip()):
            raise ValueError(f"line {i}: a citation opened at line {current[0]} is not closed")
        else:
            current[2].append(line)
    if current is not None:
        raise ValueError(f"line {current[0]}: <!-- table: {current[1]} --> is not closed by <!-- /table -->")
    return blocks


def block_mismatch(lines: list[str], cited_text: str) -> str | None:
    """None when every non-blank line of ``lines`` is a line of ``cited_text``, in its order; else the first line
    that is not (with what the table says instead, when a row with the same first cells exists)."""
    source = [s.rstrip() for s in cited_text.splitlines()]
    pos = 0
    for line in (s.rstrip() for s in lines):
        if not line.strip():
            continue
        try:
            pos = source.index(line, pos) + 1
        except ValueError:
            cells = line.split("|")
            lead = next((i for i, c in enumerate(cells) if i > 1 and re.search(r"\d", c)), len(cells))
            key = "|".join(cells[:lead]) + "|"  # the row's leading label cells, without its numbers
            near = [s for s in source if len(key) > 2 and s.startswith(key)]
            return f"{line!r} is not in the table" + (f"; the table has {near[0]!r}" if near else "")
    return None


def number_outside_citations(text: str) -> list[tuple[int, str]]:
    """Lines outside citation blocks and code blocks that carry a measured number without `<!-- not a result -->`."""
    found, inside, code = [], False, False
    for i, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if s.startswith("```"):
            code = not code
            continue
        if _OPEN.match(s):
            inside = True
        elif _CLOSE.match(s):
            inside = False
        elif not inside and not code and NOT_A_RESULT not in line and _RESULT_NUMBER.search(line):
            found.append((i, line))
    return found
