#!/usr/bin/env python3
"""Compare the tensors of two safetensors files (expected against actual).

Used by scripts/cross_check.sh to compare scripts/reference_model.py's
expected.safetensors with the output of `mamba-r1 forward`.

    compare_safetensors.py EXPECTED ACTUAL [--rtol R] [--atol A] [--names n1,n2]

For each named tensor (default: every tensor in EXPECTED) prints its name,
shape, the max abs diff, the normalised error nmse = Σ(a−e)² / Σe², and PASS
or FAIL.  A tensor passes when every element has |a − e| <= atol + rtol·|e|
(numpy.isclose's rule) and nothing is NaN or infinite where the expected value
is finite.  Exits 1 on any failure, on a tensor missing from either file or on
a shape mismatch; 0 otherwise.  With --label, each row starts with that label
(cross_check.sh uses it for its summary table).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


def load(path):
    from safetensors.numpy import load_file
    return load_file(path)


def compare(expected, actual, names, rtol, atol, label=""):
    """Returns (rows, ok). Each row: (label, name, shape, maxabs, nmse, status)."""
    rows, ok = [], True
    for name in names:
        if name not in expected:
            rows.append((label, name, "-", "-", "-", "FAIL (missing in expected)"))
            ok = False
            continue
        if name not in actual:
            rows.append((label, name, str(tuple(expected[name].shape)), "-", "-", "FAIL (missing in actual)"))
            ok = False
            continue
        e = np.asarray(expected[name]).astype(np.float64)
        a = np.asarray(actual[name]).astype(np.float64)
        # a scalar stored as shape () or (1,) is the same scalar
        if e.shape != a.shape and not (e.size == a.size == 1 and e.ndim <= 1 and a.ndim <= 1):
            rows.append((label, name, f"{tuple(e.shape)} vs {tuple(a.shape)}", "-", "-",
                         "FAIL (shape mismatch)"))
            ok = False
            continue
        e, a = e.reshape(-1), a.reshape(-1)
        diff = np.abs(a - e)
        maxabs = float(np.max(diff)) if diff.size else 0.0
        denom = float(np.sum(e * e))
        num = float(np.sum((a - e) ** 2))
        nmse = num / denom if denom > 0 else (0.0 if num == 0 else float("inf"))
        close = np.isclose(a, e, rtol=rtol, atol=atol, equal_nan=False)
        passed = bool(np.all(close))
        status = "PASS"
        if not passed:
            bad = int(np.sum(~close))
            worst = int(np.argmax(np.where(close, -np.inf, diff - rtol * np.abs(e))))
            status = f"FAIL ({bad}/{e.size} outside; e.g. flat[{worst}] exp {e[worst]:.6g} got {a[worst]:.6g})"
            ok = False
        rows.append((label, name, str(tuple(expected[name].shape)), f"{maxabs:.3e}", f"{nmse:.3e}", status))
    return rows, ok


def print_rows(rows, with_label):
    head = ("config", "tensor", "shape", "max|a-e|", "nmse", "result")
    cols = list(zip(*([head] + [tuple(map(str, r)) for r in rows])))
    start = 0 if with_label else 1
    widths = [max(len(x) for x in c) for c in cols]
    for r in [head] + rows:
        print("  ".join(str(x).ljust(w) for x, w in zip(r[start:], widths[start:])).rstrip())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="compare two safetensors files")
    ap.add_argument("expected")
    ap.add_argument("actual")
    ap.add_argument("--rtol", type=float, default=1e-3)
    ap.add_argument("--atol", type=float, default=1e-4)
    ap.add_argument("--names", default=None, help="comma-separated tensor names (default: all in EXPECTED)")
    ap.add_argument("--label", default="", help="a label printed as the first column")
    ap.add_argument("--no-header", action="store_true", help="rows only (for collecting a summary)")
    args = ap.parse_args(argv)
    try:
        expected = load(args.expected)
    except Exception as ex:  # noqa: BLE001 - report any read error in one line
        print(f"error: cannot read {args.expected}: {ex}", file=sys.stderr)
        return 1
    try:
        actual = load(args.actual)
    except Exception as ex:  # noqa: BLE001
        print(f"error: cannot read {args.actual}: {ex}", file=sys.stderr)
        return 1
    names = [n for n in args.names.split(",") if n] if args.names else sorted(expected)
    rows, ok = compare(expected, actual, names, args.rtol, args.atol, args.label)
    if args.no_header:
        for r in rows:
            print("\t".join(map(str, r if args.label else r[1:])))
    else:
        print_rows(rows, bool(args.label))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
