"""The learned-pruning study's table (issue 20) from results/learned/cells/CELL/.

    python3 results/learned/table.py > results/learned/table.md

One row per finished cell: the method, FLOPs removed and parameters kept by the network that
runs (the compacted one; SCL also has the fraction of multiply-accumulates its unstructured
connections remove), test accuracy, NLL and ECE of that network as `secateur eval` scores it, the
change from the dense network, the measured speed-up of compaction (median latencies at batch 1
and 128 of the network before and after compaction, timed alternately; for DCFF the network
before is the full-width ResNet-20) and the training time (wall seconds of every training run the
method needs, the dense network's included where it starts from it).
"""
import json
import pathlib

ROOT = pathlib.Path(__file__).parent / "cells"
ROWS = [
    ("dense", "dense"),
    ("l1-0.5", "ℓ1 norm + fine-tune"),
    ("fpgm-0.5", "FPGM + fine-tune"),
    ("fsm-0.5-noft", "FSM, compensated, no fine-tune"),
    ("fsm-0.5", "FSM + fine-tune"),
    ("scl-0.02", "SCL, λ = 0.02 (learned, from scratch)"),
    ("scl-0.03", "SCL, λ = 0.03 (learned, from scratch)"),
    ("dcff", "DCFF (learned, from scratch)"),
    ("cap-noft", "CAP (learned), cut, no fine-tune"),
    ("cap", "CAP + fine-tune"),
]


def load(p):
    return json.loads(p.read_text()) if p.is_file() else None


def scored(cell):
    out = {}
    for line in (cell / "eval.txt").read_text().splitlines()[1:]:
        k, v = line.split()
        out[k] = float(v)
    return out


host = (ROOT / "host.txt").read_text().strip() if (ROOT / "host.txt").is_file() else "?"
print(f"ResNet-20, shipped Fashion-MNIST subset, seed 0; every cell on a {host} host.\n")
print("| method | FLOPs removed | parameters kept | accuracy | Δ accuracy | NLL | ECE | speed-up b1 | speed-up b128 | "
      "training s |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
dense = scored(ROOT / "dense") if (ROOT / "dense" / "eval.txt").is_file() else None
for name, label in ROWS:
    c = ROOT / name
    if not (c / "eval.txt").is_file():
        continue
    e = scored(c)
    s = load(c / "compact.json")
    runs = sorted(c.glob("train-*-metrics.json"))
    train_s = sum(load(r)["wall_seconds"] for r in runs)
    if s:
        m, k = s["masked"], s["compacted"]
        flops = f"{1 - k['flops'] / m['flops']:.3f}"
        params = f"{k['params'] / m['params']:.3f}"
        lat = {a["batch"]: a["median_ms"] / b["median_ms"] for a, b in zip(m["latency"], k["latency"])}
        b1, b128 = f"{lat.get(1, float('nan')):.2f}×", f"{lat.get(128, float('nan')):.2f}×"
    else:
        flops, params, b1, b128 = "0", "1.000", "", ""
    if name.startswith("scl"):
        t = load(runs[0])
        flops += f" (connections: {1 - t['scl_flops_kept']:.3f})"
    delta = f"{e['test_accuracy'] - dense['test_accuracy']:+.4f}" if dense and name != "dense" else ""
    print(f"| {label} | {flops} | {params} | {e['test_accuracy']:.4f} | {delta} | {e['test_nll']:.4f} | "
          f"{e['test_ece']:.4f} | {b1} | {b128} | {train_s:.0f} |")
