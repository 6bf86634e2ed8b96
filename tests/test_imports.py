"""The import contract: no cycles among the modules of loopformer and callbacks, and each
imports only from its own layer or those below (every import counts, those inside functions
too). A new module is placed in a layer here."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("loopformer", "callbacks")

# bottom to top; a module belongs to its longest matching entry (a package covers its modules)
LAYERS = [
    ("model, tasks and what they stand on",
     {"loopformer", "loopformer.errors", "loopformer.curriculum", "loopformer.tasks",
      "loopformer.models", "loopformer.ssm", "loopformer.graphs", "loopformer.rundir",
      "loopformer.checkpoints", "loopformer.csvlog", "loopformer.data", "loopformer.baselines",
      "loopformer.stats", "loopformer.exact", "loopformer.formatting", "loopformer.cli",
      "loopformer.readout", "loopformer.tabular", "loopformer.files"}),
    ("scoring", {"loopformer.scoring"}),
    ("shifted prompts and the analysis' computations",
     {"loopformer.ood", "loopformer.analyze", "loopformer.analyze.algorithms",
      "loopformer.analyze.dynamics", "loopformer.analyze.exits", "loopformer.analyze.probes"}),
    ("settings", {"loopformer.config"}),
    ("training pieces and studies", {"loopformer.module", "callbacks", "loopformer.study"}),
    ("results: data, tables, pages, plots", {"loopformer.results"}),
    ("commands: evaluate, analyse or train a run, and write what results draws",
     {"loopformer.evaluate", "loopformer.analyze.run", "loopformer.analyze.study",
      "loopformer.analyze.__main__", "loopformer.training"}),
]


def modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The known modules ``name`` imports anywhere in its file (``from P import m`` counts as
    ``P.m`` when that is a module, else as ``P``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                      for a in node.names}
    return {m for m in found if m in known and m != name}


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports(name, path, set(mods)) for name, path in mods.items()}


def layer(name: str) -> int:
    matches = [(len(entry), i) for i, (_, entries) in enumerate(LAYERS) for entry in entries
               if name == entry or name.startswith(entry + ".")]
    assert matches, f"{name} is in no layer of tests/test_imports.py; place it in one"
    return max(matches)[1]


def cycle(g: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``g``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for n in sorted(g[m]):
            if state.get(n) == 1:
                return path[path.index(n):] + [n]
            if n not in state and (found := visit(n)):
                return found
        state[m] = 2
        path.pop()
        return None

    for m in sorted(g):
        if m not in state and (found := visit(m)):
            return found
    return None


def upward(g: dict[str, set[str]]) -> list[str]:
    return [f"{m} ({LAYERS[layer(m)][0]}) imports {n} ({LAYERS[layer(n)][0]})"
            for m, deps in sorted(g.items()) for n in sorted(deps) if layer(n) > layer(m)]


def test_no_import_cycles():
    found = cycle(graph())
    assert found is None, "import cycle: " + " -> ".join(found)


def test_layers_import_downwards_only():
    assert upward(graph()) == []


def test_the_contract_catches_a_cycle_and_an_upward_import():
    g = graph()
    assert "loopformer.results.plots" in g and "loopformer.scoring" in g["loopformer.ood"]
    g["loopformer.scoring"] = g["loopformer.scoring"] | {"loopformer.ood"}  # ood <-> scoring
    assert cycle(g) is not None
    assert ("loopformer.scoring (scoring) imports loopformer.ood (shifted prompts and the "
            "analysis' computations)") in upward(g)
