"""Counts of what the fuzz tests generated and what came of each input, kept by the tests.

Every fuzz test passes each generated input through :func:`record`, which classifies the outcome:

- ``ok``: the invariants held (the input may still have been refused with a reason: that is the
  documented behaviour, counted separately as ``refused``);
- ``escaped``: an exception the API does not promise (anything but the documented error classes)
  left the call;
- ``silent``: a non-finite value with status ok (a number that looks like a result but is not);
- ``violation``: another broken invariant (a row missing from the output, a failure without a
  reason, a file outside the run folder changed, ...);
- ``hang``: the call took longer than the target's time budget.

Crashes (the process killed by a signal) cannot be counted from inside the dying process: before
each input the ledger writes it to ``<ledger>.inflight``; ``run_fuzz.py`` reads that file when a
pytest process dies, and counts the crash with that input.

The ledger is written to ``$DEEPFUSE_FUZZ_LEDGER`` (JSON) after every input when that variable is
set (``run_fuzz.py`` sets it); without it the counts stay in memory.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

OUTCOMES = ("ok", "refused", "escaped", "silent", "violation", "hang")
#: the outcomes that are bugs (``make fuzz`` fails on any)
FAILURES = ("escaped", "silent", "violation", "hang")
LEDGER_ENV = "DEEPFUSE_FUZZ_LEDGER"


class SilentResult(AssertionError):
    """A non-finite value reported as a good result."""


class Violation(AssertionError):
    """A broken invariant other than a silent result."""


class Hang(AssertionError):
    """An input that took longer than its target's time budget."""


class _Ledger:
    def __init__(self) -> None:
        self.counts: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(OUTCOMES, 0))
        self.inputs: dict[str, int] = defaultdict(int)
        self.seconds: dict[str, float] = defaultdict(float)
        self.examples: dict[str, list[str]] = defaultdict(list)  # first failing inputs per target
        self.path = os.environ.get(LEDGER_ENV)
        if self.path and os.path.exists(self.path):  # one ledger over several pytest processes
            self._load(self.path)

    def _load(self, path: str) -> None:
        with open(path) as fh:
            data = json.load(fh)
        for target, entry in data.get("targets", {}).items():
            self.counts[target].update(entry["outcomes"])
            self.inputs[target] = entry["inputs"]
            self.seconds[target] = entry["seconds"]
            self.examples[target] = entry["failing_examples"]

    def as_dict(self) -> dict[str, Any]:
        return {
            "targets": {
                t: {
                    "inputs": self.inputs[t],
                    "outcomes": dict(self.counts[t]),
                    "seconds": round(self.seconds[t], 3),
                    "failing_examples": self.examples[t],
                }
                for t in sorted(self.counts)
            }
        }

    def flush(self) -> None:
        if not self.path:
            return
        tmp = f"{self.path}.tmp"
        with open(tmp, "w") as fh:
            json.dump(self.as_dict(), fh, indent=1)
        os.replace(tmp, self.path)

    def set_inflight(self, target: str, shown: str) -> None:
        if self.path:
            with open(f"{self.path}.inflight", "w", errors="backslashreplace") as fh:
                fh.write(f"{target}\t{shown}")

    def clear_inflight(self) -> None:
        if self.path:
            with contextlib.suppress(FileNotFoundError):
                os.remove(f"{self.path}.inflight")


LEDGER = _Ledger()


def shown(value: Any, limit: int = 300) -> str:
    """``repr`` of an input, shortened, safe to write anywhere (lone surrogates escaped)."""
    text = repr(value)
    if len(text) > limit:
        text = f"{text[:limit]}...({len(text)} chars)"
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


@contextlib.contextmanager
def record(
    target: str, value: Any, n_inputs: int = 1, budget_s: float | None = None
) -> Iterator[dict[str, bool]]:
    """Count ``n_inputs`` generated inputs of ``target`` (``value`` is what a crash report shows)
    and classify the block's outcome; the block sets ``outcome["refused"] = True`` when the
    input was refused the documented way. An exception is re-raised after it is counted, so the
    test fails and hypothesis shrinks it."""
    outcome = {"refused": False}
    text = shown(value)
    LEDGER.set_inflight(target, text)
    LEDGER.inputs[target] += n_inputs
    start = time.perf_counter()
    kind = "ok"
    try:
        yield outcome
        if budget_s is not None and time.perf_counter() - start > budget_s:
            kind = "hang"
            raise Hang(
                f"{target}: took {time.perf_counter() - start:.1f} s, over the budget "
                f"of {budget_s} s, for {text}"
            )
        if outcome["refused"]:
            kind = "refused"
    except Hang:
        raise
    except SilentResult:
        kind = "silent"
        raise
    except Violation:
        kind = "violation"
        raise
    except AssertionError:
        kind = "violation"
        raise
    except BaseException:
        kind = "escaped"
        raise
    finally:
        LEDGER.seconds[target] += time.perf_counter() - start
        LEDGER.counts[target][kind] += 1
        if kind in FAILURES and len(LEDGER.examples[target]) < 5:
            LEDGER.examples[target].append(f"{kind}: {text}")
        LEDGER.clear_inflight()
        LEDGER.flush()
