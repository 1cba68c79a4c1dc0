#!/usr/bin/env python3
"""What each crate costs in the release wasm (`make wasm-size`).

Reads `twiggy top -f csv` of a build that keeps its `name` section and adds up each
function's own bytes by the crate (and, for nhi-guard-core, the module) its name
starts with. Monomorphised generic code is named for the generic's crate: serde's
`PhantomData<T>::deserialize` instances are the readers of the documents still parsed by
serde's derive (the configuration has its own reader, `nhi_guard_core::json`), `core`
holds `drop_in_place` and iterator instances. Names and debug sections are left out: the
shipped wasm is stripped of them.
"""
import collections
import csv
import re
import sys


def owner(name: str) -> str:
    if name.startswith("custom section") or "function names" in name:
        return "(names and debug info: stripped from the release)"
    if name.startswith("data segment"):
        return "(data: constant tables, strings)"
    bare = re.sub(r"^[<&\s]*(mut |dyn )?", "", name)
    if "PhantomData<T> as serde_core::de::DeserializeSeed" in name:
        return "serde deserialize instances (TokenReview, revocation feed, JWKS, cached verifications)"
    match = re.match(r"nhi_guard_core::([a-z_0-9]+)", bare)
    if match:
        return f"nhi_guard_core::{match.group(1)}"
    match = re.match(r"([A-Za-z_][A-Za-z0-9_]*)", bare)
    return match.group(1) if match else "(other)"


def main() -> None:
    rows = list(csv.DictReader(open(sys.argv[1])))
    sizes: collections.Counter = collections.Counter()
    for row in rows:
        sizes[owner(row["Name"])] += int(row["ShallowSize"])
    shipped = sum(v for k, v in sizes.items() if not k.startswith("(names"))
    print(f"{'bytes':>9}  {'share':>6}  owner   (of {shipped:,} bytes without names and debug info)")
    for key, value in sizes.most_common():
        if key.startswith("(names"):
            continue
        if value * 200 < shipped:
            break
        print(f"{value:9,}  {100 * value / shipped:5.1f}%  {key}")


if __name__ == "__main__":
    try:
        main()
    except BrokenPipeError:  # `make wasm-size | head`
        sys.stderr.close()
