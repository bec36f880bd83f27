"""Open every image/annotation pair of a dataset once and list the bad ones.

``train.py --check-data`` runs it over the training and evaluation splits and stops; a
training run scans small datasets (up to ``QUICK_SCAN_MAX`` records per split) the same way
before its first iteration, so a corrupt file fails the start, not hour five.
"""
from typing import List, Tuple

import numpy as np

from maskformer_fast.cli_errors import one_line

__all__ = ["QUICK_SCAN_MAX", "scan", "require_clean"]

QUICK_SCAN_MAX = 500


def scan(dataset, num_classes: int = 0) -> List[Tuple[str, str]]:
    """(file, problem) of every record whose files do not load (or, with ``num_classes``, whose
    labels exceed it); an empty list when all load."""
    bad = []
    for index, record in enumerate(dataset.records):
        try:
            sample = dataset.load(index)
        except Exception as e:  # every way a file can be bad: report it and go on with the next
            bad.append((record["file_name"], one_line(e)))
            continue
        labels = sample.get("sem_seg")
        if num_classes and labels is not None:
            values = set(np.unique(labels).tolist()) - {dataset.info.ignore_label}
            over = sorted(v for v in values if v >= num_classes)
            if over:
                bad.append((record.get("sem_seg_file_name", record["file_name"]),
                            f"labels {over[:5]} are >= the model's num_classes={num_classes}"))
    return bad


def require_clean(datasets, num_classes: int, log=print) -> None:
    """Scan each (name, dataset); print every bad file and raise ValueError when there is one."""
    problems = []
    for name, dataset in datasets:
        found = scan(dataset, num_classes)
        for file, problem in found:
            log(f"bad {name} file {file}: {problem}")
        problems.extend(found)
    if problems:
        raise ValueError(f"{len(problems)} bad file(s) in the dataset (listed above), first: "
                         f"{problems[0][0]}: {problems[0][1]}")
