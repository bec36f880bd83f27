"""Merge the per-benchmark JSON files into one JSON and one markdown table.

    python benchmarks/merge_results.py OUT.json OUT.md a.json b.json ...
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import Row, markdown_table  # noqa: E402


def main(argv):
    out_json, out_md, inputs = argv[0], argv[1], argv[2:]
    meta, rows = {}, []
    for path in inputs:
        data = json.loads(Path(path).read_text())
        meta = data["meta"]
        rows.extend(Row(**r) for r in data["rows"])
    Path(out_json).write_text(json.dumps({"meta": meta, "rows": [r.__dict__ for r in rows]}, indent=1))
    header = f"# maskformer-fast GPU suite\n\n{meta.get('device', '?')}, torch {meta.get('torch')}, " \
             f"triton {meta.get('triton')}, {meta.get('date')}\n\n"
    Path(out_md).write_text(header + markdown_table(rows) + "\n")
    print(header + markdown_table(rows))


if __name__ == "__main__":
    main(sys.argv[1:])
