"""Paired table of part 3 (pruning the fully connected weights): for each prior, criterion and
fraction of the fully connected weights removed, the change from the dense network of the same
seed (mean ± sd over seeds) in accuracy, NLL, ECE and OOD AUROC, and the largest fraction whose
accuracy loss is not significant: a one-sided paired t-test at 5% over the seeds
(t ≥ −t₀.₉₅,ₙ₋₁; with 3 seeds t₀.₉₅,₂ = 2.920) and a mean loss under one point.

    target/notebook-venv/bin/python results/radio-galaxy/fc_pruning_table.py > results/radio-galaxy/fc-pruning/paired.md
"""
import math
import pathlib

import pandas as pd

HERE = pathlib.Path(__file__).parent
T95 = {1: 6.314, 2: 2.920, 3: 2.353, 4: 2.132, 5: 2.015}
rows = pd.read_csv(HERE / "fc-pruning" / "results.csv")
rows = rows[rows.accuracy.notna() & ~rows.finetuned.astype(bool)]
dense = rows[rows.criterion == "dense"].set_index(["model", "seed"])
pruned = rows[rows.criterion != "dense"].copy()
for m in ["accuracy", "nll", "ece", "ood_auroc"]:
    pruned["d_" + m] = pruned[m].values - dense.loc[list(zip(pruned.model, pruned.seed)), m].values

print("# Part 3: pruning the fully connected weights (paired with the dense network of each seed)\n")
print("Fraction = target fraction of the fully connected weights removed (the convolutions are kept).")
print("Δ = pruned − dense of the same seed, mean ± sd over seeds; accuracy in points.")
print("`ok`: the accuracy loss is not significant (one-sided paired t-test at 5%) and under one point.\n")
safe = []
for (model, crit), g in pruned.groupby(["model", "criterion"], sort=False):
    print(f"## {model}, {crit}\n")
    print("| fraction | seeds | Δ accuracy | Δ NLL | Δ ECE | Δ OOD AUROC | ok |")
    print("|---|---|---|---|---|---|---|")
    last_ok = 0.0
    broken = False
    for t, c in g.groupby("target_sparsity"):
        n = len(c)
        da = 100 * c.d_accuracy
        mean, sd = da.mean(), (da.std() if n > 1 else float("nan"))
        tstat = mean / (sd / math.sqrt(n)) if n > 1 and sd > 0 else (0.0 if mean >= 0 else -math.inf)
        ok = n > 1 and mean > -1.0 and tstat >= -T95.get(n - 1, 1.96)
        if ok and not broken:
            last_ok = t
        broken = broken or not ok
        cell = lambda s, f: f"{s.mean():+{f}} ± {s.std():{f}}" if n > 1 else f"{s.mean():+{f}}"
        print(f"| {t:g} | {n} | {cell(da, '.2f')} | {cell(c.d_nll, '.4f')} | {cell(c.d_ece, '.4f')} | "
              f"{cell(c.d_ood_auroc, '.4f')} | {'yes' if ok else 'no'} |")
    safe.append((model, crit, last_ok))
    print()
print("## Largest fraction removed without a significant loss (every smaller fraction too)\n")
print("| prior | criterion | fraction of fc weights |")
print("|---|---|---|")
for model, crit, t in safe:
    print(f"| {model} | {crit} | {t:g} |")
