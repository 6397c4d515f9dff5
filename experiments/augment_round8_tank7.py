"""docs/augment.md round 8: round 7 (runs/tank7-aug, inpainted by the scarce-split generator) with
the copies control of all three detector seeds, in the form `earthgen eval augment --control
copies` writes. Round 7's augmented runs (runs/tank7-gain.json) are joined with the copies runs
(runs/control7-gain-s<seed>.json: `earthgen eval augment --augmented runs/control7
--real-detector runs/tank4-det1500[-s1|-s2]`, where runs/control7 = real + the copies that
`write_copies(runs/tank7-aug, ...)` makes, checked pixel for pixel); detector training is
deterministic, so this equals a fresh `--control copies` run. Prints the table, writes the JSON.

    python experiments/augment_round8_tank7.py [OUT.json]   # from the repository root"""

import json
import sys

from earthgen.augment.evaluate import _difference, aggregate_runs, format_table

aug = json.load(open("runs/tank7-gain.json"))
runs = []
for r in aug["runs"]:
    c = json.load(open(f"runs/control7-gain-s{r['seed']}.json"))
    assert (
        c["seed"] == r["seed"]
        and abs(c["real"]["rotated"]["mAP"] - r["real"]["rotated"]["mAP"]) < 1e-6
    )  # same baseline
    r = dict(
        r,
        copies=c["augmented"],
        gain_over_copies=_difference(r["augmented"], c["augmented"], r["classes"]),
    )
    r["sizes"] = dict(r["sizes"], copies=c["sizes"]["augmented"])
    runs.append(r)
agg = aggregate_runs(runs)
print(format_table(agg))
out = sys.argv[1] if len(sys.argv) > 1 else None
if out:
    json.dump(agg, open(out, "w"), indent=1)
