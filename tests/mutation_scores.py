"""Per-module mutation scores from the last ``mutmut run`` (README, "Developing").

    ORDERFSM_HYPOTHESIS=mutation .venv/bin/mutmut run --max-children 2
    .venv/bin/python tests/mutation_scores.py

Reads ``mutants/**/*.meta`` and prints one Markdown table row per mutated
module: mutants, killed (a test failed, or it hung past mutmut's timeout),
survived, not covered by the selected tests, and the score (killed / all).
``mutmut results`` lists the survivors, ``mutmut show NAME`` shows one.
Not collected by pytest (the name does not start with ``test_``).
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

KILLED = {1, 3, 24, 36, 152, 255, -24}
"""Exit codes mutmut records for a mutant the tests caught (failed, or timed out)."""
SURVIVED = {0}
UNCOVERED = {5, 33}


def scores(root: Path) -> list[tuple[str, Counter[str]]]:
    rows = []
    for meta in sorted((root / "mutants").rglob("*.py.meta")):
        codes = json.loads(meta.read_text())["exit_code_by_key"].values()
        if not codes:
            continue
        count: Counter[str] = Counter()
        for code in codes:
            if code in KILLED:
                count["killed"] += 1
            elif code in SURVIVED:
                count["survived"] += 1
            elif code in UNCOVERED:
                count["no tests"] += 1
            else:
                count["other"] += 1
        module = str(meta.relative_to(root / "mutants")).removesuffix(".meta")
        rows.append((module, count))
    return rows


def main() -> int:
    root = Path(__file__).resolve().parent.parent
    rows = scores(root)
    if not rows:
        print("no mutation results: run `mutmut run` first", file=sys.stderr)
        return 1
    print("| module | mutants | killed | survived | no tests | score |")
    print("|---|---|---|---|---|---|")
    for module, count in rows:
        total = sum(count.values())
        killed = count["killed"]
        print(
            f"| `{module}` | {total} | {killed} | {count['survived']} | "
            f"{count['no tests']} | {100 * killed / total:.0f}% |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
