#!/usr/bin/env python3
"""Runs the e2e suites (test-harness/tests/*.rs) as `cargo test` would, two suites at a
time, each suite's tests one at a time.

`cargo test` runs test binaries one after another; most suites hold one or two tests
that spend much of their time waiting on Envoy (ticks, caches, timeouts), so one core
idles. Here at most JOBS tests run at once, as with `cargo test -- --test-threads JOBS`,
but drawn from different suites: the same load on the machine, less idle time.

Usage: run_suites.py [--jobs N] [CARGO_TEST_ARGS...]
The suites are built with `cargo test -p test-harness --tests --no-run`; the longest
(as recorded in target/e2e-durations.json by the previous run, else the list below)
start first. Each suite's output is printed when it ends; the exit status is 1 if any
suite failed, and the failed ones are named at the end.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HARNESS = ROOT / "test-harness"
DURATIONS = ROOT / "target" / "e2e-durations.json"
# Start order when no run has been recorded yet: the longest suites first, so that
# the short ones fill in at the end.
LONGEST_FIRST = ["jwks_lifecycle", "state_bounds", "faults", "partners", "lifecycle", "emulator", "degraded_mode",
                 "vm_crash", "observability"]


def build(cargo_args):
    """The e2e suites' executables, by suite name."""
    command = ["cargo", "test", "-p", "test-harness", "--tests", "--no-run",
               "--message-format=json-render-diagnostics", *cargo_args]
    out = subprocess.run(command, cwd=ROOT, stdout=subprocess.PIPE, check=True, text=True).stdout
    suites = {}
    for line in out.splitlines():
        message = json.loads(line)
        target = message.get("target", {})
        if message.get("reason") == "compiler-artifact" and target.get("kind") == ["test"] \
                and message.get("executable"):
            suites[target["name"]] = message["executable"]
    return suites


def order(names):
    try:
        recorded = json.loads(DURATIONS.read_text())
    except (OSError, ValueError):
        recorded = {}
    if recorded:
        return sorted(names, key=lambda n: (-recorded.get(n, 0.0), n))
    first = [n for n in LONGEST_FIRST if n in names]
    return first + sorted(n for n in names if n not in first)


def run(name, executable):
    env = dict(os.environ, CARGO_MANIFEST_DIR=str(HARNESS))
    started = time.monotonic()
    # Output goes to a file, not a pipe: a suite whose child keeps the pipe open
    # (an Envoy that outlived its test) must not hang the runner.
    log = ROOT / "target" / "e2e-logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as sink:
        status = subprocess.run([executable, "--test-threads", "1"], cwd=HARNESS, env=env,
                                stdout=sink, stderr=subprocess.STDOUT).returncode
    return name, status, time.monotonic() - started, log.read_text(errors="replace")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=2)
    args, cargo_args = parser.parse_known_args()
    suites = build(cargo_args)
    if not suites:
        sys.exit("no e2e suites were built")
    names = order(list(suites))
    started = time.monotonic()
    failed, durations = [], {}
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        running = [pool.submit(run, name, suites[name]) for name in names]
        for done in as_completed(running):
            name, status, seconds, output = done.result()
            durations[name] = round(seconds, 1)
            verdict = "ok" if status == 0 else f"FAILED (exit {status})"
            print(f"== {name}: {verdict} in {seconds:.1f} s", flush=True)
            if status == 0:
                print("".join(l + "\n" for l in output.splitlines() if l.startswith("test result:")), end="")
            else:
                print(output, end="", flush=True)
                failed.append(name)
    DURATIONS.write_text(json.dumps(durations, indent=1, sort_keys=True) + "\n")
    print(f"== {len(names)} suites in {time.monotonic() - started:.0f} s, {args.jobs} at a time")
    if failed:
        sys.exit(f"failed suites: {' '.join(sorted(failed))}")


if __name__ == "__main__":
    main()
