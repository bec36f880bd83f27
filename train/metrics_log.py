"""OUTPUT/metrics.jsonl and TensorBoard scalars of a training run (rank 0 only)."""
import json
import os
import sys
from typing import Dict, Optional

from train.checkpoint import atomic_write_text

__all__ = ["MetricsLog"]


class MetricsLog:
    """OUTPUT/metrics.jsonl (one JSON object per line) and TensorBoard scalars, rank 0 only."""

    def __init__(self, output: str, enabled: bool):
        self.enabled = enabled
        self.path = os.path.join(output, "metrics.jsonl")
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(os.path.join(output, "tensorboard"))

    def truncate_after(self, iteration: int) -> None:
        """Drop records past ``iteration`` (written after the checkpoint a resume starts from)."""
        if not self.enabled or not os.path.exists(self.path):
            return
        kept = []
        with open(self.path, errors="replace") as f:
            for number, line in enumerate(f, 1):
                record = self._parse(line, number)
                if record is not None and record.get("iter", 0) <= iteration:
                    kept.append(json.dumps(record) + "\n")
        atomic_write_text("".join(kept), self.path)

    def _parse(self, line: str, number: int) -> Optional[Dict]:
        """One record, or None (with a warning) for a torn or corrupt line, e.g. cut by a full disk."""
        if not line.strip():
            return None
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            print(f"warning: {self.path} line {number} is not a complete JSON record (an interrupted write?): "
                  f"dropped {line.strip()[:80]!r}", file=sys.stderr)
            return None
        return record

    def write(self, record: Dict, prefix: str) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        for key, value in record.items():
            if key != "iter" and isinstance(value, (int, float)):
                self.writer.add_scalar(f"{prefix}/{key}", value, record["iter"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
