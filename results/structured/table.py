"""The structured-pruning study's table (issue 19) from results/structured/cells/ARCH/CELL/.

    python3 results/structured/table.py > results/structured/table.md   # standard library only

One row per finished cell: method, the FLOPs removed (target and reached), parameters kept,
test accuracy and ECE after the fine-tune (and the change from the dense network), and the
measured speed-up of the compacted network at batch 1 and 128 (median latencies of the masked
and the compacted network, timed alternately). A cells folder is named after its architecture,
with a tag when its cells come from another kind of host (`run.sh`'s TAG); the network column
names the host that trained and timed them (the folder's host.txt).
"""
import json
import pathlib

ROOT = pathlib.Path(__file__).parent / "cells"
ORDER = ["l1", "fpgm", "bn-relu", "group-snr", "greg2"]
HOSTS = {"AuthenticAMD": "AMD EPYC", "GenuineIntel": "Intel Xeon"}
NAMES = {"l1": "ℓ1 norm", "fpgm": "FPGM", "bn-relu": "BN statistics", "group-snr": "group SNR (mean-field)",
         "greg2": "GReg-2 (filters)"}


def load(p):
    return json.loads(p.read_text()) if p.is_file() else None


print("| network | method | FLOPs removed, target → reached | parameters kept | accuracy | Δ accuracy | ECE | "
      "speed-up b1 | speed-up b128 |")
print("|---|---|---|---:|---:|---:|---:|---:|---:|")
for arch_dir in sorted(p for p in ROOT.iterdir() if p.is_dir()):
    host = (arch_dir / "host.txt").read_text().strip() if (arch_dir / "host.txt").is_file() else ""
    arch = arch_dir.name.split("-")[0] + (f" ({HOSTS.get(host, host)})" if host else "")
    dense = load(arch_dir / "dense" / "metrics.json")
    mf = load(arch_dir / "mean-field" / "metrics.json")
    if dense:
        print(f"| {arch} | dense | 0 | 1.000 | {dense['test_accuracy']:.4f} | | {dense['test_ece']:.4f} | | |")
    if mf:
        print(f"| {arch} | dense, mean-field | 0 | 1.000 | {mf['test_accuracy']:.4f} | | {mf['test_ece']:.4f} | | |")
    cells = []
    for c in arch_dir.iterdir():
        if not (c / "compact.json").is_file():
            continue
        method, frac = c.name.rsplit("-", 1)
        cells.append((ORDER.index(method) if method in ORDER else 99, float(frac), method, c))
    for _, frac, method, c in sorted(cells):
        s = load(c / "compact.json")
        ft = load(c / "finetune-metrics.json")
        base = mf if method == "group-snr" else dense
        m, k = s["masked"], s["compacted"]
        reached = 1 - k["flops"] / m["flops"]
        lat = {(a["batch"]): a["median_ms"] / b["median_ms"] for a, b in zip(m["latency"], k["latency"])}
        delta = ft["test_accuracy"] - base["test_accuracy"] if base else float("nan")
        print(f"| {arch} | {NAMES.get(method, method)} | {frac:.2f} → {reached:.3f} | {k['params'] / m['params']:.3f} | "
              f"{ft['test_accuracy']:.4f} | {delta:+.4f} | {ft['test_ece']:.4f} | "
              f"{lat.get(1, float('nan')):.2f}× | {lat.get(128, float('nan')):.2f}× |")
