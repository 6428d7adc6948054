#!/usr/bin/env python3
"""Build data/diabetes/diabetes.csv from the two files scikit-learn ships.

Usage: python3 cut.py /path/to/sklearn/datasets/data
Reads diabetes_data_raw.csv.gz (442 rows of 10 space-separated raw, unscaled values) and
diabetes_target.csv.gz (442 targets), and writes one comma-separated CSV with a header
(age,sex,bmi,bp,s1,s2,s3,s4,s5,s6,target). Cell texts are copied unchanged; the target is
written as an integer (the values are whole numbers stored as 1.51e+02 etc.). Stdlib only.
"""
import gzip
import os
import sys

SRC = sys.argv[1]
DST = os.path.join(os.path.dirname(os.path.abspath(__file__)), "diabetes.csv")
COLUMNS = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6", "target"]

with gzip.open(os.path.join(SRC, "diabetes_data_raw.csv.gz"), "rt") as f:
    rows = [line.split() for line in f if line.strip()]
with gzip.open(os.path.join(SRC, "diabetes_target.csv.gz"), "rt") as f:
    targets = [line.strip() for line in f if line.strip()]
assert len(rows) == len(targets) == 442, (len(rows), len(targets))
assert all(len(r) == 10 for r in rows)
with open(DST, "w", newline="\n") as out:
    out.write(",".join(COLUMNS) + "\n")
    for r, t in zip(rows, targets):
        tv = float(t)
        assert tv == int(tv)
        out.write(",".join(r + [str(int(tv))]) + "\n")
print(f"wrote {len(rows)} rows to {DST}")
