"""The paired readings of the ResNet-20 pruning-at-initialisation study (issue 13), from results.csv:

    target/notebook-venv/bin/python results/pai-resnet20/analysis.py > results/pai-resnet20/analysis.md

Seed 0 only, so every difference is one pair of runs (same initialisation, scoring examples and
Hutchinson probes; only the compared setting differs), not a mean over seeds.
"""
import pandas as pd

d = pd.read_csv(__file__.rsplit("/", 1)[0] + "/results.csv", dtype={"error": str})
dense = d[d.criterion == "dense"].accuracy.iloc[0]
d = d[d.criterion != "dense"]
order = ["random", "magnitude", "snip", "grasp", "synflow", "fp", "fts", "hp", "hts", "hp-ggn", "hts-ggn"]
acc = d.pivot_table(index="criterion", columns=["sparsity", "bn_warmup"], values="accuracy").reindex(order) * 100


def mark(row):
    m = ""
    if isinstance(row.collapsed, str) and row.collapsed:
        m = " (C)"
    elif isinstance(row.near_collapse, str) and row.near_collapse:
        m = " (N)"
    return m


marks = {(r.criterion, r.sparsity, r.bn_warmup): mark(r) for r in d.itertuples()}
print(f"Dense ResNet-20: {100 * dense:.2f}%. Test accuracy (%) after ten epochs with the masks held; (C) a layer "
      "collapsed, (N) nearly so.\n")
print("| criterion | 0.9, no warm-up | 0.9, warm-up | 0.98, no warm-up | 0.98, warm-up |")
print("|---|---:|---:|---:|---:|")
for c in order:
    cells = []
    for s in (0.9, 0.98):
        for w in (False, True):
            v = acc.loc[c, (s, w)] if (s, w) in acc.columns else float("nan")
            cells.append(f"{v:.2f}{marks.get((c, s, w), '')}")
    print(f"| {c} | " + " | ".join(cells) + " |")

print("\n### Warm-up, paired: accuracy with warm-up − without (points)\n")
print("| criterion | 0.9 | 0.98 |")
print("|---|---:|---:|")
diffs = []
for c in order:
    row = []
    for s in (0.9, 0.98):
        v = acc.loc[c, (s, True)] - acc.loc[c, (s, False)]
        diffs.append((c, s, v))
        row.append(f"{v:+.2f}")
    print(f"| {c} | " + " | ".join(row) + " |")
pos = sum(v > 0 for _, _, v in diffs)
neg = sum(v < 0 for _, _, v in diffs)
zero = sum(v == 0 for _, _, v in diffs)
print(f"\nWarm-up helps in {pos}, hurts in {neg} and changes nothing in {zero} of {len(diffs)} pairs. Random and "
      "magnitude read only the weights, so their masks, and rows, are the same with and without it; SynFlow's "
      "forward pass goes through the batch norms' running statistics, which the warm-up sets.")

print("\n### Against SNIP, same warm-up setting: accuracy − SNIP's (points)\n")
print("| criterion | 0.9, no warm-up | 0.9, warm-up | 0.98, no warm-up | 0.98, warm-up |")
print("|---|---:|---:|---:|---:|")
for c in order:
    if c == "snip":
        continue
    row = []
    for s in (0.9, 0.98):
        for w in (False, True):
            row.append(f"{acc.loc[c, (s, w)] - acc.loc['snip', (s, w)]:+.2f}")
    print(f"| {c} | " + " | ".join(row) + " |")

print("\n### Collapse with and without warm-up\n")
print("| warm-up | runs | a layer collapsed | a layer nearly collapsed |")
print("|---|---:|---:|---:|")
for w in (False, True):
    sub = d[d.bn_warmup == w]
    c = sub.collapsed.fillna("").astype(str).str.len().gt(0).sum()
    n = sub.near_collapse.fillna("").astype(str).str.len().gt(0).sum()
    print(f"| {'on' if w else 'off'} | {len(sub)} | {c} | {n} |")
