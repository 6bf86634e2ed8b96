"""Print the config overrides of the fastest benchmarked training configuration whose GPU
tests passed (used by gpu_check.sh).

    python benchmarks/gpu_pick.py OUTDIR [SHAPE]   # reads OUTDIR/bench.jsonl, OUTDIR/gpu_tests.xml

A configuration counts only at SHAPE (default: the seed's final shape) on the Lightning path.
bf16 needs the bf16 agreement test to have passed; torch.compile in a mode needs both the
compiled-vs-eager test and the GPU smoke training in that mode. Prints nothing when no
configuration qualifies.
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def test_outcomes(xml_path: Path) -> dict[str, bool]:
    """Test name -> passed (skipped tests count as not passed)."""
    if not xml_path.is_file():
        return {}
    return {case.get("name", ""): not any(c.tag in ("failure", "error", "skipped") for c in case)
            for case in ET.parse(xml_path).iter("testcase")}


def required_tests(extra: list[str]) -> set[str]:
    """Name prefixes of the tests a configuration relies on."""
    opts = dict(o.split("=", 1) for o in extra if "=" in o)
    precision = opts.get("trainer.precision", "32-true")
    need = set()
    if precision.startswith("bf16"):
        need.add("test_bf16_autocast_agrees_with_fp32_on_gpu")
    if opts.get("perf.compile", "false") == "true":
        mode = opts.get("perf.compile_mode", "default")
        need |= {f"test_compiled_block_agrees_with_eager_on_gpu[{mode}]",
                 f"test_gpu_smoke_training[{mode}]"}
    if opts.get("perf.cuda_graph", "false") == "true":
        compiled = "-compiled" if opts.get("perf.compile", "false") == "true" else ""
        need |= {"test_captured_step_graph_replays_the_reference_gradients",
                 f"test_gpu_graph_training_matches_eager_training[{precision}{compiled}]"}
    return need


def qualifies(prefixes: set[str], outcomes: dict[str, bool]) -> bool:
    """Every prefix names at least one test, and every test it names passed."""
    for prefix in prefixes:
        named = [ok for name, ok in outcomes.items() if name.startswith(prefix)]
        if not named or not all(named):
            return False
    return True


def pick(out: Path, shape: str = "final") -> list[str] | None:
    bench = out / "bench.jsonl"
    if not bench.is_file():
        return None
    outcomes = test_outcomes(out / "gpu_tests.xml")
    rows = [json.loads(line) for line in bench.read_text().splitlines() if line.strip()]
    ok = [r for r in rows if r["shape"] == shape and r["path"] == "lightning"
          and qualifies(required_tests(r.get("extra", [])), outcomes)]
    if not ok:
        return None
    return max(ok, key=lambda r: r["steps_per_s"]).get("extra", [])


if __name__ == "__main__":
    best = pick(Path(sys.argv[1]), *sys.argv[2:3])
    print(" ".join(best or []))
