"""The mutation table: each planted bug of refdiff.testing.mutants against the public check
that must catch it, over several seeds (caught, examples to the first failure, time).

    python examples/mutation_report.py [--quick] [--seeds N]
"""

import argparse
import sys
import time

from refdiff.testing import mutants as M


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="one seed")
    p.add_argument("--seeds", type=int, default=10)
    args = p.parse_args(argv)
    seeds = range(1 if args.quick else args.seeds)
    t0 = time.perf_counter()
    budget = 40 if args.quick else None  # the controls run in full in tests/test_kit_mutants.py
    controls = [(c.name, M.run_case(c, max_examples=budget).passed) for c in M.CONTROLS]
    rows = M.mutation_table(seeds=seeds, max_examples=300)
    print(M.format_table(rows))
    caught = sum(r["caught"] == r["seeds"] for r in rows)
    ok = sum(passed for _, passed in controls)
    print(f"\n{caught}/{len(rows)} mutants caught in every seed; "
          f"{ok}/{len(controls)} correct controls pass; {time.perf_counter() - t0:.1f} s")
    return 0 if caught == len(rows) and ok == len(controls) else 1


if __name__ == "__main__":
    sys.exit(main())
