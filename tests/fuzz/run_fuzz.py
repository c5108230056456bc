"""``make fuzz``: run the fuzz suite with thousands of inputs and print what came of them.

Each test module runs in its own pytest process (``HYPOTHESIS_PROFILE``, default ``fuzz``) that
writes its counts to a shared ledger (:mod:`tests.fuzz.ledger`: every generated input and its
outcome, counted by the tests themselves). A process killed by a signal is a crash, counted here
with the input it was working on (the ledger's in-flight file); a process over ``--timeout`` is
killed and counted as a hang with its in-flight input.

Prints, per target: inputs generated, refused with a reason (expected), crashes, hangs, escaped
exceptions, silent results (non-finite values with status ok), other broken invariants, seconds;
then the totals and the wall time. Exits 1 when any of crashes, hangs, escaped, silent or
violations is non-zero, when a pytest process fails, or when fewer than ``--min-inputs`` inputs
were generated.

Usage::

    python tests/fuzz/run_fuzz.py [--profile fuzz] [--timeout 1800] [--min-inputs 10000]
                                  [--json fuzz-report.json] [MODULE ...]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
MODULES = [
    "test_fuzz_smiles.py",
    "test_fuzz_crystals.py",
    "test_fuzz_settings.py",
    "test_fuzz_workflows.py",
]
COLUMNS = ["inputs", "refused", "crashes", "hangs", "escaped", "silent", "violation", "seconds"]
BUG_COLUMNS = ["crashes", "hangs", "escaped", "silent", "violation"]


def run_module(
    module: str, ledger: Path, profile: str, timeout: float, log: Path
) -> tuple[int, str | None, str | None]:
    """``(pytest exit code, crash input, hang input)`` of one module's pytest process."""
    env = dict(
        os.environ,
        HYPOTHESIS_PROFILE=profile,
        DEEPFUSE_FUZZ_LEDGER=str(ledger),
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
    )
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-p",
        "no:randomly",
        "-o",
        "addopts=",
        str(HERE / module),
    ]
    inflight = Path(f"{ledger}.inflight")
    with open(log, "ab") as out:
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return -1, None, _take(inflight) or f"{module}: no input in flight"
    if code < 0:  # killed by a signal: SIGSEGV, SIGABRT, the OOM killer's SIGKILL
        return code, f"{_take(inflight) or module} (signal {-code})", None
    _take(inflight)
    return code, None, None


def _take(path: Path) -> str | None:
    if not path.exists():
        return None
    text = path.read_text(errors="backslashreplace")
    path.unlink()
    return text


def summarize(
    ledger: dict, crashes: dict[str, list[str]], hangs: dict[str, list[str]]
) -> dict[str, dict[str, float]]:
    rows: dict[str, dict[str, float]] = {}
    for target, entry in ledger.get("targets", {}).items():
        o = entry["outcomes"]
        rows[target] = {
            "inputs": entry["inputs"],
            "refused": o["refused"],
            "crashes": 0,
            "hangs": o["hang"],
            "escaped": o["escaped"],
            "silent": o["silent"],
            "violation": o["violation"],
            "seconds": entry["seconds"],
        }
    for kind, found in (("crashes", crashes), ("hangs", hangs)):
        for module, inputs in found.items():
            target = inputs[0].split("\t")[0] if "\t" in inputs[0] else module
            row = rows.setdefault(target, dict.fromkeys(COLUMNS, 0))
            row[kind] += len(inputs)
    return rows


def print_table(rows: dict[str, dict[str, float]], wall: float) -> dict[str, float]:
    width = max([len("target"), *map(len, rows)]) + 2
    print("target".ljust(width) + "".join(c.rjust(11) for c in COLUMNS))
    totals = dict.fromkeys(COLUMNS, 0.0)
    for target, row in sorted(rows.items()):
        print(target.ljust(width) + "".join(_cell(row[c]).rjust(11) for c in COLUMNS))
        for c in COLUMNS:
            totals[c] += row[c]
    print("total".ljust(width) + "".join(_cell(totals[c]).rjust(11) for c in COLUMNS))
    print(f"wall time: {wall:.0f} s ({wall / 60:.1f} min)")
    return totals


def _cell(value: float) -> str:
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", default=MODULES)
    parser.add_argument("--profile", default=os.environ.get("HYPOTHESIS_PROFILE", "fuzz"))
    parser.add_argument(
        "--timeout",
        type=float,
        default=1800.0,
        help="seconds per module before it counts as a hang (default 1800)",
    )
    parser.add_argument("--min-inputs", type=int, default=10_000)
    parser.add_argument("--json", default=None, help="also write the summary here")
    parser.add_argument("--log", default=None, help="pytest output (default: a temporary file)")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="deepfuse-fuzz-"))
    ledger, log = work / "ledger.json", Path(args.log or work / "pytest.log")
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_bytes(b"")  # this run's output only (each module's process appends)
    start = time.perf_counter()
    failed_modules: list[str] = []
    crashes: dict[str, list[str]] = {}
    hangs: dict[str, list[str]] = {}
    for module in args.modules:
        t0 = time.perf_counter()
        code, crash, hang = run_module(module, ledger, args.profile, args.timeout, log)
        print(f"{module}: pytest exit {code} in {time.perf_counter() - t0:.0f} s", flush=True)
        if crash:
            crashes[module] = [crash]
        if hang:
            hangs[module] = [hang]
        if code != 0:
            failed_modules.append(module)
    wall = time.perf_counter() - start
    data = json.loads(ledger.read_text()) if ledger.exists() else {"targets": {}}
    rows = summarize(data, crashes, hangs)
    print(f"\nfuzz profile {args.profile!r}; pytest output: {log}")
    totals = print_table(rows, wall)
    for target, entry in data["targets"].items():
        for example in entry["failing_examples"]:
            print(f"  {target}: {example}")
    for module, found in {**crashes, **hangs}.items():
        print(f"  {module}: {'crash' if module in crashes else 'hang'} on {found[0]}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(
            json.dumps(
                {
                    "profile": args.profile,
                    "wall_s": round(wall, 1),
                    "targets": rows,
                    "totals": totals,
                    "failed_modules": failed_modules,
                },
                indent=1,
            )
        )
    bugs = sum(totals[c] for c in BUG_COLUMNS)
    if failed_modules:
        print(f"FAILED: pytest failed in {failed_modules} (see {log})")
    if totals["inputs"] < args.min_inputs:
        print(f"FAILED: {totals['inputs']:.0f} inputs generated, fewer than {args.min_inputs}")
    ok = not bugs and not failed_modules and totals["inputs"] >= args.min_inputs
    print("fuzz: OK" if ok else f"fuzz: {bugs:.0f} bug(s) found")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
