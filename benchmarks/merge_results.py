"""Merge the GPU suite's step records and per-benchmark JSON files into one JSON and one markdown.

    python benchmarks/merge_results.py OUT.json OUT.md [--steps STEPS.tsv] [--step-logs DIR] [IN.json ...]

STEPS.tsv (written by benchmarks/gpu_suite.sh): one line per step, ``id<TAB>status<TAB>seconds<TAB>title``,
status "ok", "failed (rc N)", "timed out after Ns" or "skipped: why". DIR/<id>.out is a step's
output: the tests pytest-timeout stopped, and the test running when a step was cut, are read from
it. An input with "meta" is a benchmark's (its "rows" are benchmark rows, its other keys sections,
e.g. bench_model's profile); any other (the parity CLI's) becomes a section under its file's stem.
An input that is missing or unreadable (a step cut while writing it) is listed, never fatal: the
summary must be written whatever happened. Standard library only, for the same reason.
"""
import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.table import Row, dict_table, markdown_table  # noqa: E402

# pytest -rA's summary line of a test pytest-timeout stopped
TIMEOUT_LINE = re.compile(r"^(?:FAILED|ERROR) (\S+::\S+).*Timeout", re.M)
# pytest -v's line for a test: its node id, then (once it finished) its outcome
TEST_LINE = re.compile(r"^(\S+::\S+)(.*)$", re.M)
OUTCOMES = ("PASSED", "FAILED", "SKIPPED", "ERROR", "XFAIL", "XPASS")


def load_inputs(paths):
    """(meta, rows, sections, errors) of the input JSON files."""
    meta, rows, sections, errors = {}, [], {}, []
    for path in map(Path, paths):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            errors.append(f"{path.name}: {type(e).__name__}: {e}")
            continue
        if "meta" not in data:
            sections[path.stem] = data
            continue
        meta = data["meta"]
        rows.extend(Row(**r) for r in data["rows"])
        sections.update({k: v for k, v in data.items() if k not in ("meta", "rows")})
    return meta, rows, sections, errors


def tests_in_trouble(output: str, stopped: bool) -> dict:
    """The tests pytest-timeout stopped and, when pytest itself was stopped (cut by the step's
    limit, or crashed: a test with no outcome), the one then running."""
    found = {"timed_out_tests": list(dict.fromkeys(TIMEOUT_LINE.findall(output)))}
    if stopped:
        running = [m.group(1) for m in TEST_LINE.finditer(output) if not m.group(2).strip().startswith(OUTCOMES)]
        if running:
            found["running_when_stopped"] = running[-1]
    return found


def read_steps(tsv, logs_dir):
    steps = []
    for line in Path(tsv).read_text().splitlines() if tsv and Path(tsv).exists() else []:
        step_id, status, seconds, title = (line.split("\t") + ["", "", ""])[:4]
        step = {"id": step_id, "status": status, "seconds": int(seconds) if seconds.isdigit() else None,
                "title": title}
        out = Path(logs_dir, f"{step_id}.out") if logs_dir else None
        if out is not None and out.exists():
            step.update(tests_in_trouble(out.read_text(errors="replace"), status.startswith(("timed out", "failed"))))
        steps.append(step)
    return steps


def render_markdown(summary) -> str:
    meta = summary["meta"]
    parts = [f"# maskformer-fast GPU suite\n\n{meta.get('device') or 'device ?'}, torch {meta.get('torch') or '?'}, "
             f"triton {meta.get('triton') or '?'}, {meta.get('date') or 'date ?'}"]
    if summary["steps"]:
        parts.append("## Steps\n\n" + dict_table(summary["steps"]))
    trouble = summary["timed_out_tests"]
    if trouble:
        parts.append("## Tests that timed out\n\n" + "\n".join(f"- {t}" for t in trouble))
    if summary["rows"]:
        parts.append("## Benchmarks\n\n" + markdown_table([Row(**r) for r in summary["rows"]]))
    for name, section in summary["sections"].items():
        for key, value in (section.items() if isinstance(section, dict) else [("", section)]):
            if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
                parts.append(f"## {name} {key}".rstrip() + "\n\n" + dict_table(value))
    if summary["errors"]:
        parts.append("## Unreadable inputs\n\n" + "\n".join(f"- {e}" for e in summary["errors"]))
    return "\n\n".join(parts) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out_json")
    p.add_argument("out_md")
    p.add_argument("inputs", nargs="*")
    p.add_argument("--steps", default=None)
    p.add_argument("--step-logs", default=None)
    args = p.parse_intermixed_args(argv)  # gpu_suite.sh passes the options before the inputs
    meta, rows, sections, errors = load_inputs(args.inputs)
    if not meta and "environment" in sections:  # no benchmark finished: the versions step's record
        meta = {k: sections["environment"].get(k) for k in ("device", "torch", "triton", "date")}
    steps = read_steps(args.steps, args.step_logs)
    trouble = [t for s in steps for t in s.get("timed_out_tests", []) + [s.get("running_when_stopped")] if t]
    summary = {"meta": meta, "steps": steps, "timed_out_tests": trouble, "rows": [r.__dict__ for r in rows],
               "sections": sections, "errors": errors}
    Path(args.out_json).write_text(json.dumps(summary, indent=1))
    Path(args.out_md).write_text(render_markdown(summary))
    print(render_markdown(summary))


if __name__ == "__main__":
    main()
