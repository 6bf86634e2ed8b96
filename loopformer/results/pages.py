"""Results pages: every table between markers

    <!-- table:KIND data=NAME [option=value ...] -->
    ...
    <!-- /table:KIND -->

is rebuilt from ``data/NAME.json`` beside the page by the renderer of its kind
(:mod:`loopformer.results.tables`, :mod:`loopformer.results.analysis_tables`)."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from loopformer.errors import ConfigError
from loopformer.results import analysis_tables
from loopformer.results.tables import (
    for_dataset,
    table_comparisons,
    table_confirmatory,
    table_dial,
    table_meta,
    table_ood,
    table_ood_trend,
    table_runs,
    table_variants,
)

log = logging.getLogger(__name__)

TABLES = {"variants": table_variants, "comparisons": table_comparisons, "runs": table_runs,
          "meta": table_meta, "ood": table_ood, "analysis": analysis_tables.table_analysis,
          "ood_trend": table_ood_trend, "confirmatory": table_confirmatory,
          "dial": table_dial}
OPTIONS = {"variants": {"data", "variants", "k", "loops", "dataset"},
           "comparisons": {"data", "pairs", "k", "loops", "of", "with", "dataset"},
           "runs": {"data", "variants", "k", "loops", "dataset"}, "meta": {"data"},
           "ood": {"data", "variants", "loops", "baselines"},
           "analysis": {"data", "part", "variants"},
           "ood_trend": {"data", "pairs", "trend", "loops"}, "confirmatory": {"data"},
           "dial": {"data", "variants", "values"}}
MARKER = re.compile(r"<!-- table:(\w+)((?: +[\w]+=[^\s>]+)*) *-->\n(.*?)<!-- /table:\1 -->",
                    re.DOTALL)


def render(kind: str, opts: dict, data: dict) -> str:
    if kind not in TABLES:
        raise ConfigError(f"unknown table kind {kind!r}; use one of {list(TABLES)}")
    unknown = sorted(set(opts) - OPTIONS[kind])
    if unknown:
        raise ConfigError(f"table:{kind} has unknown options {unknown}; allowed: "
                          f"{sorted(OPTIONS[kind])}")
    if "dataset" in opts:  # one held-out table of a classification study
        data = for_dataset(data, opts["dataset"])
    return "\n".join(TABLES[kind](data, opts)) + "\n"


def with_study(data: dict, other: dict) -> dict:
    """``data`` with ``other``'s runs added under the names ``STUDY/variant`` (option
    ``with=NAME`` of ``table:comparisons``: a variant of one study against one of another, e.g.
    at another budget). Both must share the task, the prompt length and the escape rule."""
    for key in ("task", "n_points", "escape"):
        if data[key] != other[key]:
            raise ConfigError(f"with={other['study']}: its {key} {other[key]} differs from "
                              f"{data['study']}'s {data[key]}; only studies of one task, prompt "
                              f"length and escape rule are compared")
    name = other["study"]
    return {**data, "variants": data["variants"] + [f"{name}/{v}" for v in other["variants"]],
            "runs": data["runs"] + [{**r, "variant": f"{name}/{r['variant']}"}
                                    for r in other["runs"]]}


def rebuild(page: Path) -> tuple[str, list[str]]:
    """The page's text with every marked table rebuilt, and the kinds of those that
    changed."""
    text, changed, cache = page.read_text(), [], {}

    def sub(m: re.Match) -> str:
        kind = m.group(1)
        opts = dict(o.split("=", 1) for o in m.group(2).split())
        if "data" not in opts:
            raise ConfigError(f"{page}: table:{kind} needs data=NAME (data/NAME.json beside "
                              f"the page)")
        def load(name: str) -> dict:
            path = page.parent / "data" / f"{name}.json"
            if path not in cache:
                if not path.is_file():
                    raise ConfigError(f"{page}: table:{kind} reads {path}, which does not exist")
                cache[path] = json.loads(path.read_text())
            return cache[path]

        data = load(opts["data"])
        if "with" in opts:
            data = with_study(data, load(opts["with"]))
        body = render(kind, opts, data)
        if body != m.group(3):
            changed.append(kind)
        return m.group(0)[: m.start(3) - m.start(0)] + body + f"<!-- /table:{kind} -->"

    return MARKER.sub(sub, text), changed


def pages_with_tables(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.md") if MARKER.search(p.read_text()))




def rebuild_pages(pages: list[Path], check: bool) -> list[str]:
    """Rebuild each page's tables in place, or with ``check`` only compare them: one line per
    page whose tables differ from their data."""
    missing = [str(p) for p in pages if not p.is_file()]
    if missing:
        raise ConfigError(f"no such page: {', '.join(missing)}")
    stale = []
    for page in pages:
        text, changed = rebuild(page)
        if check:
            if changed:
                stale.append(f"{page}: tables {changed} differ from their data")
        else:
            page.write_text(text)
            log.info("%s: rebuilt, %d table(s) changed", page, len(changed))
    return stale
