#!/usr/bin/env python3
"""Reads `perf script` output (stdin) of `nhi-wasm-profile` run with wasmtime's perf map,
and prints where the filter's time went: the share of samples inside the wasm, per
export the host called, in µs per request (from the loop's own timing, argv[1]), and
the functions inside `proxy_on_request_headers`, inclusive and self.

`make wasm-profile` runs it. Samples outside any wasm frame are the emulator's host
side and the loop, which stand in for Envoy here and say nothing about it."""

import collections
import os
import re
import sys

FRAME = re.compile(r"^\s*[0-9a-f]+ (.+?)(\+0x[0-9a-f]+)? \((.*)\)$")
WASM_PREFIX = re.compile(r"^wasm\[\d+\]::(function\[\d+\]::)?")


def in_wasm(where):
    """Compiled wasm: the emulator's on-disk module cache (`target/emulator-modules/*.cwasm`),
    or code compiled in this process, which perf names through the perf map."""
    return where.endswith(".cwasm") or re.fullmatch(r"/tmp/perf-\d+\.map", where) is not None


def demangle(name):
    """Rust legacy mangling (`_ZN` length-prefixed segments, hash last) to a path;
    other names as they are."""
    if not name.startswith("_ZN"):
        return name
    parts, rest = [], name[3:]
    while rest and rest[0].isdigit():
        digits = re.match(r"\d+", rest).group(0)
        length = int(digits)
        parts.append(rest[len(digits) : len(digits) + length])
        rest = rest[len(digits) + length :]
    if parts and re.fullmatch(r"h[0-9a-f]{16}", parts[-1]):
        parts.pop()
    path = "::".join(parts)
    for code, text in (("$LT$", "<"), ("$GT$", ">"), ("$u20$", " "), ("$C$", ","), ("$RF$", "&"), ("..", "::")):
        path = path.replace(code, text)
    return path


def main():
    ns_per_request = None
    with open(sys.argv[1]) as loop:
        for line in loop:
            key, _, value = line.partition(" ")
            if key == "ns_per_request":
                ns_per_request = int(value)
    if ns_per_request is None:
        sys.exit("wasm-profile.py: no ns_per_request in " + sys.argv[1])
    by_export = collections.Counter()
    inclusive = collections.Counter()
    own = collections.Counter()
    total = 0
    for sample in sys.stdin.read().split("\n\n"):
        frames = []
        for line in sample.strip().split("\n")[1:]:
            match = FRAME.match(line)
            if match:
                frames.append((WASM_PREFIX.sub("", match.group(1)), in_wasm(match.group(3))))
        if not frames:
            continue
        total += 1
        wasm = [name for name, in_wasm in frames if in_wasm]
        exports = [name for name in wasm if name.startswith("proxy_on_")]
        export = exports[-1] if exports else ("(host)" if not wasm else "(other wasm)")
        by_export[export] += 1
        if export == "proxy_on_request_headers":
            for name in set(wasm):
                inclusive[name] += 1
            if frames[0][1]:
                own[frames[0][0]] += 1
    if total == 0:
        sys.exit("wasm-profile.py: no samples")
    us = lambda count: count / total * ns_per_request / 1000
    inside = total - by_export["(host)"]
    print(f"{total} samples; the loop took {ns_per_request / 1000:.1f} µs a request, "
          f"{us(inside):.2f} µs of it inside the wasm ({inside / total:.1%})")
    print("\nper export the host called (µs a request):")
    for export, count in by_export.most_common():
        if export != "(host)" and us(count) >= 0.005:
            print(f"  {us(count):6.2f}  {export}")
    requests = by_export["proxy_on_request_headers"]
    print("\ninside proxy_on_request_headers, inclusive (µs a request):")
    for name, count in inclusive.most_common(int(os.environ.get("TOPN", 25))):
        print(f"  {us(count):6.2f}  {demangle(name)[:110]}")
    print("\ninside proxy_on_request_headers, self (µs a request):")
    for name, count in own.most_common(int(os.environ.get("TOPN", 20))):
        print(f"  {us(count):6.2f}  {demangle(name)[:110]}")
    if requests == 0:
        sys.exit("wasm-profile.py: no sample inside proxy_on_request_headers")


if __name__ == "__main__":
    main()
