"""The DLLP comparison table and paired differences from results/dllp/results.csv.

    target/notebook-venv/bin/python results/dllp/table.py > results/dllp/table.md

Per architecture: each method (model, criterion) at each target sparsity, without and with the
fine-tune, mean ± sd over seeds of accuracy (%), NLL, ECE and OOD AUROC; then DLLP minus
magnitude paired by seed (the same trained network), mean ± sd over seeds.
"""
import sys
from pathlib import Path

import pandas as pd

here = Path(__file__).resolve().parent
rows = pd.read_csv(here / "results.csv", dtype={"error": str})
if (rows["error"].fillna("") != "").any():
    bad = rows[rows["error"].fillna("") != ""]
    print(f"{len(bad)} failed rows:", file=sys.stderr)
    print(bad[["model", "seed", "criterion", "target_sparsity", "finetuned", "error"]], file=sys.stderr)
rows = rows[rows["error"].fillna("") == ""].copy()
rows["accuracy"] *= 100
rows["arch"] = rows["model"].str.split("-").str[0]
rows["method"] = rows["model"].str.split("-", n=1).str[1] + " / " + rows["criterion"]
METRICS = [("accuracy", "accuracy %", 2), ("nll", "NLL", 3), ("ece", "ECE", 3), ("ood_auroc", "OOD AUROC", 3)]
NAMES = {"lenet5": "LeNet-5", "mlp": "LeNet-300-100"}


def cell(v, d):
    if len(v) == 0:
        return "–"
    if len(v) == 1:
        return f"{v.iloc[0]:.{d}f} (1 seed)"
    return f"{v.mean():.{d}f} ± {v.std(ddof=1):.{d}f}"


out = []
for arch in ["lenet5", "mlp"]:
    a = rows[rows["arch"] == arch]
    if a.empty:
        continue
    out.append(f"## {NAMES[arch]}\n")
    seeds = sorted(a["seed"].unique())
    out.append(f"Seeds: {', '.join(map(str, seeds))}; mean ± sd over seeds.\n")
    out.append("| method | sparsity | fine-tuned | " + " | ".join(m[1] for m in METRICS) + " |")
    out.append("|---|---|---|" + "---|" * len(METRICS))
    dense = a[a["criterion"] == "dense"]
    for (method, ft), g in dense.groupby(["method", "finetuned"], sort=False):
        out.append(f"| {method} | 0 | {'yes' if ft else 'no'} | " + " | ".join(cell(g[m], d) for m, _, d in METRICS) + " |")
    rest = a[a["criterion"] != "dense"]
    for s in sorted(rest["target_sparsity"].unique()):
        for ft in [False, True]:
            for method, g in rest[(rest["target_sparsity"] == s) & (rest["finetuned"] == ft)].groupby("method", sort=False):
                out.append(f"| {method} | {s:g} | {'yes' if ft else 'no'} | " + " | ".join(cell(g[m], d) for m, _, d in METRICS) + " |")
    out.append("")
    # paired: DLLP minus magnitude on the same trained network
    det = a[a["model"] == f"{arch}-deterministic"]
    det = det[det["criterion"] != "dense"]
    piv = det.pivot_table(index=["seed", "target_sparsity", "finetuned"], columns="criterion", values=[m for m, _, _ in METRICS])
    if ("accuracy", "dllp") in piv.columns and ("accuracy", "magnitude") in piv.columns:
        out.append(f"DLLP minus magnitude on the same trained {NAMES[arch]} (paired by seed):\n")
        out.append("| sparsity | fine-tuned | seeds | " + " | ".join("Δ " + m[1] for m in METRICS) + " |")
        out.append("|---|---|---|" + "---|" * len(METRICS))
        for (s, ft), g in piv.groupby(level=["target_sparsity", "finetuned"]):
            diffs = [(g[(m, "dllp")] - g[(m, "magnitude")]).dropna() for m, _, _ in METRICS]
            n = len(diffs[0])
            out.append(f"| {s:g} | {'yes' if ft else 'no'} | {n} | " + " | ".join(cell(dv, d) for dv, (_, _, d) in zip(diffs, METRICS)) + " |")
        out.append("")
print("\n".join(out))
