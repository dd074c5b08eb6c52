"""The mutation table: each planted bug of refdiff.testing.mutants against the public check
that must catch it, over several seeds at the checks' default budget (caught, examples to the
first failure, the deterministic CI search), and, on a torch float32 target, how far above
the error bound the failing examples land (error/bound of the first failure, median over
seeds, and the smallest among all failing examples, shrinking included).

    python examples/mutation_report.py [--quick] [--seeds N] [--markdown]
"""

import argparse
import sys
import time

from refdiff.testing import Target
from refdiff.testing import mutants as M


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="one seed, no float32 columns")
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--markdown", action="store_true", help="the table of docs/testing.md")
    args = p.parse_args(argv)
    seeds = range(1 if args.quick else args.seeds)
    t0 = time.perf_counter()
    controls = [(c.name, M.run_case(c, max_examples=40 if args.quick else None).passed)
                for c in M.CONTROLS]
    rows = M.mutation_table(seeds=seeds, ci=not args.quick)
    rows32 = None
    if not args.quick:
        try:
            rows32 = M.mutation_table(seeds=seeds, target=Target("torch", "float32"))
        except ImportError:
            rows32 = None
    print(M.format_table(rows, markdown=args.markdown, rows32=rows32))
    caught = sum(r["caught"] == r["seeds"] for r in rows)
    ok = sum(passed for _, passed in controls)
    print(f"\n{caught}/{len(rows)} mutants caught in every seed; "
          f"{ok}/{len(controls)} correct controls pass; {time.perf_counter() - t0:.1f} s")
    return 0 if caught == len(rows) and ok == len(controls) else 1


if __name__ == "__main__":
    sys.exit(main())
