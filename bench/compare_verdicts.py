"""Compare the claims of two runs of the smoke suite (two CPU configurations, two machines):
the verdicts side by side with their statistics and intervals, as Markdown.

    python bench/compare_verdicts.py DIR_A DIR_B [LABEL_A LABEL_B]

DIR_A and DIR_B hold the <notebook>_claims.csv tables a run wrote (figures/<profile>/ or
results/<profile>/). Exits 1 if any verdict differs.
"""
import sys
from pathlib import Path

import pandas as pd


def main(a: Path, b: Path, label_a: str = "A", label_b: str = "B") -> int:
    lines = [f"| notebook | claim | model | {label_a}: mean [interval] | {label_a} | {label_b}: mean [interval] | "
             f"{label_b} | same verdict |", "|---|---|---|---|---|---|---|---|"]
    differ = same = moved = 0
    missing = []
    for path in sorted(a.glob("*_claims.csv")):
        other = b / path.name
        if not other.exists():
            missing.append(path.name.replace("_claims.csv", ""))
            continue
        ca = pd.read_csv(path, keep_default_na=False, na_values=[""])
        cb = pd.read_csv(other, keep_default_na=False, na_values=[""])
        for (_, x), (_, y) in zip(ca.iterrows(), cb.iterrows()):
            assert (x["claim"], x["model"]) == (y["claim"], y["model"]), (x["claim"], y["claim"])
            ok = x["verdict"] == y["verdict"]
            same, differ = same + ok, differ + (not ok)
            moved += not (x["statistic"] == y["statistic"] or (pd.isna(x["statistic"]) and pd.isna(y["statistic"])))
            lines.append(f"| {path.name.replace('_claims.csv', '')} | {x['claim'][:60]} | {x['model']} | "
                         f"{x['statistic']:.2f} [{x['low']:.2f}, {x['high']:.2f}] | {x['verdict']} | "
                         f"{y['statistic']:.2f} [{y['low']:.2f}, {y['high']:.2f}] | {y['verdict']} | "
                         f"{'yes' if ok else '**no**'} |")
    print("\n".join(lines))
    if missing:
        print(f"\nNot in {label_b}'s run (not finished): {', '.join(missing)}.")
    print(f"\n{same} verdicts identical, {differ} different; {moved} of {same + differ} statistics differ "
          "between the runs" + (" (the two runs trained different models)." if moved else "."))
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2]), *sys.argv[3:5]))
