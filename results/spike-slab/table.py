"""Issue 22's table from results/spike-slab/cells/*/metrics.json (standard library only).

    python3 results/spike-slab/table.py > results/spike-slab/table.md

One row per method: mean ± sd over the seeds found of hidden nodes removed (spike-and-slab: nodes
with γ < ½; GSM gates: hidden units whose gate is below ½; sparse VD: hidden units left with no
incoming or no outgoing weight, from the cell's units.json written by sparse_vd_units.py), weights kept (test-time non-zero weights of the 266,610), test accuracy, NLL, ECE, and
the seeds. The accuracy is that of the network the method keeps at test time, averaged over
the posterior's samples (metrics.json `test_accuracy`).
"""
import json
import pathlib
import statistics
import sys

HERE = pathlib.Path(__file__).parent
ORDER = ["deterministic", "sparse-vd", "gsm-gates", "spike-slab", "spike-slab-e100", "spike-slab-kl1", "mean-field-kl1"]
LABEL = {
    "deterministic": "deterministic (30 epochs)",
    "sparse-vd": "sparse VD (30 epochs)",
    "gsm-gates": "GSM gates (30 epochs)",
    "spike-slab": "spike-and-slab, divergence weight 0.15 (shipped, 150 epochs)",
    "spike-slab-e100": "spike-and-slab, divergence weight 0.15, 100 epochs",
    "spike-slab-kl1": "spike-and-slab, divergence weight 1 (100 epochs)",
    "mean-field-kl1": "mean-field, no node selection, divergence weight 1 (100 epochs)",
}


def fmt(xs, scale=1.0, digits=2):
    xs = [x * scale for x in xs]
    if not xs:
        return "—"
    if len(xs) == 1:
        return f"{xs[0]:.{digits}f}"
    return f"{statistics.mean(xs):.{digits}f} ± {statistics.stdev(xs):.{digits}f}"


def nodes_removed(m):
    if "nodes_removed" in m:  # spike-and-slab, or sparse_vd_units.py's units.json merged in
        return m["nodes_removed"] / m["nodes_total"]
    if "units_removed" in m:
        return m["units_removed"]
    return None


def main():
    cells = {}
    for f in sorted(HERE.glob("cells/*/metrics.json")):
        name, seed = f.parent.name.rsplit("-s", 1)
        m = json.loads(f.read_text())
        units = f.parent / "units.json"  # sparse VD: hidden units left without weights
        if units.exists():
            m.update(json.loads(units.read_text()))
        cells.setdefault(name, []).append((int(seed), m))
    names = [n for n in ORDER if n in cells] + sorted(set(cells) - set(ORDER))
    out = sys.stdout
    out.write("| method | hidden nodes removed (%) | parameters kept (% of the 266,610 weights) | accuracy (%) | NLL | ECE | seeds |\n")
    out.write("|---|---:|---:|---:|---:|---:|---|\n")
    for n in names:
        rows = [m for _, m in sorted(cells[n], key=lambda c: c[0])]
        seeds = ",".join(str(s) for s, _ in sorted(cells[n], key=lambda c: c[0]))
        removed = [r for r in (nodes_removed(m) for m in rows) if r is not None]
        kept = [m["params_nonzero"] / m["params_weights"] for m in rows if "params_nonzero" in m]
        out.write(
            f"| {LABEL.get(n, n)} | {fmt(removed, 100, 1)} | {fmt(kept, 100, 2)} | "
            f"{fmt([m['test_accuracy'] for m in rows], 100, 2)} | {fmt([m['test_nll'] for m in rows], 1, 3)} | "
            f"{fmt([m['test_ece'] for m in rows], 1, 3)} | {seeds} |\n"
        )


if __name__ == "__main__":
    main()
