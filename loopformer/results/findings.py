"""A findings table checked against the confirmatory tables it quotes.

A results page may sum up a study's claims in a findings table whose rows read
``| ID[, ID...] | figures ... | verdict |``: the ids of the confirmatory rows
(``table:confirmatory``) that decide the claim, the figures quoted from them, and their
verdict. :func:`findings_errors` lists what such a table gets wrong: a figure that is not in
its own confirmatory rows, a verdict that is not theirs, or one that their adjusted p does not
support (:func:`supported`).
"""

from __future__ import annotations

import re

# the header of a rendered confirmatory table (loopformer.results.tables.table_confirmatory)
HEADER = ("| id | claim | a vs b | measure | design | n | floor | effect [exact CI] | raw p | "
          "adjusted p | verdict |")
VERDICT_CLASSES = ("holds", "does not hold", "comparable", "not resolved", "cannot be resolved")
# a figure: a decimal number, or a count such as 4/5
FIGURE = re.compile(r"(?<![\w.])\d+\.\d+(?![\w.])|(?<![\w/])\d+/\d+(?![\w/])")


def confirmatory_rows(text: str) -> list[str]:
    """The rows of every confirmatory table rendered in ``text`` (a page)."""
    rows, inside = [], False
    for line in text.splitlines():
        if line == HEADER:
            inside = True
        elif inside and line.startswith("|") and not line.startswith("|---"):
            rows.append(line)
        elif not line.startswith("|"):
            inside = False
    return rows


def supported(row: str, alpha: float = 0.05) -> bool:
    """A row's verdict agrees with its adjusted p: holds / comparable iff adjusted p <= alpha."""
    cells = [c.strip() for c in row.strip("|").split("|")]
    adjusted, verdict = float(cells[9]), cells[10]
    decided = verdict.startswith(("holds", "comparable"))
    return decided == (adjusted <= alpha)


def verdict_class(text: str) -> str | None:
    """The verdict class a verdict cell starts with (None: none of them)."""
    return next((v for v in VERDICT_CLASSES if text.startswith(v)), None)


def findings_errors(findings: list[str], confirmatory: list[str]) -> list[str]:
    """What a findings table gets wrong against the confirmatory table: each findings row
    ``| ID[, ID...] | text ... | verdict |`` quotes only figures of its own confirmatory rows, and
    its verdict is theirs, which their adjusted p must support."""
    by_id = {r.split(" | ")[0].strip("| "): r for r in confirmatory}
    errors = []
    for row in findings:
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        ids = [i.strip() for i in cells[0].split(",")]
        own = [by_id[i] for i in ids if i in by_id]
        if len(own) != len(ids):
            errors.append(f"{cells[0]}: no confirmatory row")
            continue
        quoted = " ".join(own)
        errors += [f"{cells[0]}: {f} is not in its row" for c in cells[1:-1]
                   for f in FIGURE.findall(c) if f not in quoted]
        verdicts = sorted({verdict_class(r.split(" | ")[10]) for r in own})
        if [verdict_class(cells[-1])] != verdicts or not all(supported(r) for r in own):
            errors.append(f"{cells[0]}: verdict {cells[-1]!r} is not its rows' {verdicts}")
    return errors


