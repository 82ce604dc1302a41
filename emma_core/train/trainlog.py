"""The training log: log.csv and log.jsonl (one record per logged step), summary.json, loss_curve.png."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from ..atomic import write_atomic, write_json_atomic

FIELDS = ["step", "loss", "val_loss", "lr", "grad_norm", "seconds", "samples_per_second"]


class TrainLog:
    def __init__(self, run_dir: str | Path, enabled: bool = True):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.records: list[dict] = []

    def restore(self, records: list[dict]) -> None:
        """After a resume: keep what the checkpoint knew and rewrite the files (drops rows logged after it)."""
        self.records = [dict(r) for r in records]
        self.flush()

    def add(self, record: dict) -> None:
        self.records.append(record)
        if not self.enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        csv_path = self.run_dir / "log.csv"
        new = not csv_path.exists()
        with open(csv_path, "a", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, FIELDS, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow({k: _fmt(record.get(k)) for k in FIELDS})
        with open(self.run_dir / "log.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def flush(self) -> None:
        if not self.enabled:
            return
        buf = io.StringIO()
        writer = csv.DictWriter(buf, FIELDS, extrasaction="ignore")
        writer.writeheader()
        for r in self.records:
            writer.writerow({k: _fmt(r.get(k)) for k in FIELDS})
        write_atomic(self.run_dir / "log.csv", lambda h: h.write(buf.getvalue()), binary=False)
        lines = "".join(json.dumps(r) + "\n" for r in self.records)
        write_atomic(self.run_dir / "log.jsonl", lambda h: h.write(lines), binary=False)

    def summary(self, data: dict) -> None:
        if self.enabled:
            write_json_atomic(self.run_dir / "summary.json", data)


def _fmt(value):
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return value
