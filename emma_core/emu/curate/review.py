"""The review list: the human pass over the filters' verdicts (format in the package docstring)."""
from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from ...atomic import write_atomic
from .filters import CurationResult

REVIEW_NAME = "emu_review.csv"
REVIEW_FIELDS = ["file", "decision", "auto", "reason"]
KEEP_WORDS = {"keep", "k", "yes", "y", "1", "true", "ok"}
REJECT_WORDS = {"reject", "r", "no", "n", "0", "false", "x", "drop"}


@dataclass(frozen=True)
class Decision:
    keep: bool
    auto: Optional[bool]
    reason: str = ""

    @property
    def human(self) -> bool:
        """A person changed the filters' verdict."""
        return self.auto is not None and self.keep != self.auto


def parse_decision(word: str, where: str) -> bool:
    w = word.strip().lower()
    if w in KEEP_WORDS:
        return True
    if w in REJECT_WORDS:
        return False
    raise ValueError(f"{where}: decision {word!r} is neither keep nor reject")


def read_review_list(path: str | os.PathLike) -> dict[str, Decision]:
    """{file name: Decision} from a review list (see the module docstring for the format)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"review list {path} does not exist (run the curation first: it writes one)")
    lines = [ln for ln in path.read_text(encoding="utf-8-sig").splitlines() if not ln.lstrip().startswith("#")]
    rows = list(csv.reader(lines))
    rows = [r for r in rows if any(c.strip() for c in r)]
    if not rows:
        return {}
    header = [c.strip().lower() for c in rows[0]]
    if "file" in header and "decision" in header:
        fi, di = header.index("file"), header.index("decision")
        ai = header.index("auto") if "auto" in header else None
        ri = header.index("reason") if "reason" in header else None
        body = rows[1:]
        first = 2
    else:  # a bare "file,decision" list without a header
        fi, di, ai, ri, body, first = 0, 1, None, None, rows, 1
    out = {}
    for n, row in enumerate(body):
        where = f"{path.name} row {n + first}"
        if len(row) <= max(fi, di):
            raise ValueError(f"{where}: expected 'file,decision', got {','.join(row)!r}")
        name = row[fi].strip()
        auto = None
        if ai is not None and len(row) > ai and row[ai].strip():
            auto = parse_decision(row[ai], where)
        reason = row[ri].strip() if ri is not None and len(row) > ri else ""
        out[name] = Decision(parse_decision(row[di], where), auto, reason)
    return out


def review_rows(result: CurationResult, previous: Optional[dict[str, Decision]] = None) -> list[dict]:
    removed = {r.name: f"{r.filter}: {r.reason}" for r in result.removed}
    rows = []
    for info in result.images:
        auto = info.name not in removed
        keep = auto
        old = (previous or {}).get(info.name)
        if old is not None and old.human:
            keep = old.keep  # a person's decision survives a re-run
        rows.append({"file": info.name, "decision": "keep" if keep else "reject",
                     "auto": "keep" if auto else "reject", "reason": removed.get(info.name, "")})
    return rows


def write_review_list(path: str | os.PathLike, result: CurationResult, keep_human: bool = True) -> int:
    """Write (atomically) the review list; returns how many human decisions from an existing list were kept."""
    path = Path(path)
    previous = read_review_list(path) if (keep_human and path.is_file()) else None
    rows = review_rows(result, previous)
    buf = io.StringIO()
    buf.write(f"# Emu review list for {result.folder}\n"
              "# Edit 'decision' (keep or reject) per file; the tuning uses exactly the files marked keep.\n"
              "# 'auto' and 'reason' are what the automatic filters said. Lines starting with # are ignored.\n")
    writer = csv.DictWriter(buf, REVIEW_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(path, lambda h: h.write(buf.getvalue()), binary=False)
    return sum(1 for r in rows if r["decision"] != r["auto"])


def apply_review(names: Iterable[str], review: dict[str, Decision]) -> tuple[list[str], list[tuple[str, str]]]:
    """(names marked keep, [(name, why not used)]) in the order given."""
    kept, skipped = [], []
    for name in names:
        d = review.get(name)
        if d is None:
            skipped.append((name, "not in the review list (run the curation again to review it)"))
        elif not d.keep:
            skipped.append((name, "rejected in the review list" + (f" ({d.reason})" if d.reason else "")))
        else:
            kept.append(name)
    return kept, skipped
