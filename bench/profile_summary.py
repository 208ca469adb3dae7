"""Summarise py-spy raw samples (``e2e_bench.py --profile DIR``): where the server's time goes.

    .venv/bin/python bench/profile_summary.py DIR/morag-pg-drain.txt [--top 25]

Prints the share of samples in which each function is on the stack (inclusive) and at the top
(self), for the project's own code and for the libraries, so a before/after pair reads side by side.
"""

from __future__ import annotations

import argparse
import collections
import re
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.+?) \((?P<file>[^:]+)(?::\d+)?\)$")


def load(path: Path) -> list[tuple[list[str], int]]:
    """(frames root first, count) per line of a py-spy raw (collapsed) file."""
    out = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        out.append((stack.split(";"), int(count)))
    return out


def label(frame: str) -> str:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    file = m.group("file")
    for marker in ("site-packages/", "/lib/python3"):
        if marker in file:
            file = file.split(marker, 1)[1]
            break
    else:
        file = "/".join(file.split("/")[-2:])
    return f"{m.group('func')} ({file})"


def summarise(samples: list[tuple[list[str], int]], top: int) -> str:
    total = sum(c for _, c in samples) or 1
    idle = sum(c for frames, c in samples if frames and "select (selectors.py" in frames[-1])
    incl: collections.Counter[str] = collections.Counter()
    self_: collections.Counter[str] = collections.Counter()
    for frames, c in samples:
        labels = [label(f) for f in frames]
        for name in set(labels):
            incl[name] += c
        if labels:
            self_[labels[-1]] += c
    lines = [f"{total} samples, {idle / total:.0%} of them idle in the event loop's select", "", "inclusive:"]
    lines += [f"  {n / total:6.1%}  {name}" for name, n in incl.most_common(top)]
    lines += ["", "self:"]
    lines += [f"  {n / total:6.1%}  {name}" for name, n in self_.most_common(top)]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("file", type=Path)
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    print(summarise(load(args.file), args.top))


if __name__ == "__main__":
    main()
