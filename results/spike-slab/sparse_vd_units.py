"""Hidden units a sparse-VD LeNet-300-100 removes at test time (standard library only).

    python3 results/spike-slab/sparse_vd_units.py RUN_DIR > units.json

Sparse VD removes weights, not units: a weight is zero at test time when
log α = log σ² − log μ² ≥ 3 (the run's `bayes.sparse_vd_threshold`, Molchanov et al. 2017). A
hidden unit is removed with them when all its incoming weights or all its outgoing weights are
zero (it then feeds the next layer a constant at most, which that layer's bias absorbs).
"""
import array
import json
import math
import pathlib
import struct
import sys

THRESHOLD = 3.0


def tensors(path):
    b = pathlib.Path(path).read_bytes()
    n = struct.unpack("<Q", b[:8])[0]
    head = json.loads(b[8 : 8 + n])
    out = {}
    for name, t in head.items():
        if name == "__metadata__":
            continue
        assert t["dtype"] == "F32", (name, t["dtype"])
        lo, hi = t["data_offsets"]
        a = array.array("f")
        a.frombytes(b[8 + n + lo : 8 + n + hi])
        out[name] = (t["shape"], a)
    return out


def kept(t, layer):
    (rows, cols), mu = t[f"{layer}.weight_mu"]
    _, ls2 = t[f"{layer}.weight_log_sigma2"]
    keep = [ls2[i] - math.log(mu[i] * mu[i] + 1e-8) < THRESHOLD for i in range(rows * cols)]
    return rows, cols, keep


def main():
    run = pathlib.Path(sys.argv[1])
    cfg = (run / "config.toml").read_text()
    assert "sparse-vd" in cfg, "not a sparse-VD run"
    t = tensors(run / "weights.safetensors")
    layers = sorted({k.split(".")[0] for k in t}, key=lambda s: int(s[2:]))
    masks = [kept(t, l) for l in layers]
    result = {}
    for i in range(len(layers) - 1):
        rows, cols, keep = masks[i]
        nrows, ncols, nkeep = masks[i + 1]
        assert ncols == rows
        has_in = [any(keep[j * cols : (j + 1) * cols]) for j in range(rows)]
        has_out = [any(nkeep[r * ncols + j] for r in range(nrows)) for j in range(rows)]
        removed = sum(1 for j in range(rows) if not (has_in[j] and has_out[j]))
        result[f"units_removed.{layers[i]}"] = removed
        result[f"units_total.{layers[i]}"] = rows
    result["nodes_removed"] = sum(v for k, v in result.items() if k.startswith("units_removed."))
    result["nodes_total"] = sum(v for k, v in result.items() if k.startswith("units_total."))
    result["weights_kept"] = sum(sum(m[2]) for m in masks)
    json.dump(result, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
