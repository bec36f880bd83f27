"""Every Triton kernel in ``kernels/`` compiles for sm_90 and sm_80, at every launch configuration.

The interpreter is lenient (``tl.dot`` on 8x8 blocks runs interpreted but does not compile),
so the kernels are also compiled for real GPUs here, without one.

Convention (for every kernel module ``kernels/<name>.py``, names starting with "_" excluded):
the module has a ``CONFIGS`` table and ``COMPILE_CONFIGS``, made by
``maskformer_fast.kernels._settings.compile_configs`` from recorded example launches on meta
tensors: ``CompileConfig(config, fn, signature, constexprs, attrs, num_warps, num_stages,
launch)``, typed as the JIT types that launch (unit strides as constexpr 1, the divisibility-16
hints in ``attrs``), so the registers reported are those of the kernel a real launch runs.
The tests check that the configs cover exactly ``CONFIGS`` and that each signature, constexpr
set and hint set equals what Triton's own JIT binder derives from the same arguments.

Each config must also fit the arch's shared memory (a larger one compiles, then fails at
launch). Compilation runs in a subprocess without TRITON_INTERPRET (tests/conftest.py sets it, and
under it ``@triton.jit`` yields an interpreter wrapper that ``triton.compile`` rejects).

Run directly for the resource table that NOTES.md records:
    .venv/bin/python tests/test_kernels_compile.py [module ...]
prints registers, stack bytes (register spills) and shared memory per kernel and config (``--json`` for JSON).
"""
import importlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

KERNEL_DIR = Path(__file__).resolve().parents[1] / "kernels"
ARCHS = (90, 80)
# Largest shared memory one block may use (opt-in), per compute capability: a config above it
# compiles but fails to launch with "out of resource: shared memory".
MAX_SHARED_BYTES = {90: 232448, 80: 166912}


def kernel_module_names():
    return sorted(p.stem for p in KERNEL_DIR.glob("*.py") if not p.stem.startswith("_"))


def _resource_usage(cubin: bytes) -> dict:
    """Registers / local (spill) / static shared bytes from cuobjdump, which ships with Triton."""
    import triton

    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([str(tool), "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
    usage = {}
    for line in out.splitlines():
        if "REG:" in line:
            for field in line.split():
                key, _, value = field.partition(":")
                if key in ("REG", "STACK", "LOCAL", "SHARED"):
                    usage[key.lower()] = int(value)
    return usage


def compile_module(name: str, archs=ARCHS) -> list:
    """Compile every COMPILE_CONFIGS entry of kernels/<name>.py; one result dict per (config, arch)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    module = importlib.import_module(f"maskformer_fast.kernels.{name}")
    configs = getattr(module, "COMPILE_CONFIGS", None)
    if not configs:
        return [{"module": name, "error": "module exposes no COMPILE_CONFIGS"}]
    results = []
    for cfg in configs:
        shown = {k: (str(v) if not isinstance(v, (int, float, bool, str)) else v) for k, v in cfg.constexprs.items()}
        for arch in archs:
            first_pointer = next((t[1:] for t in cfg.signature.values() if t.startswith("*")), "-")
            row = {"module": name, "config": cfg.config, "kernel": cfg.fn.__name__, "arch": arch,
                   "dtype": first_pointer,
                   "constexprs": shown, "num_warps": cfg.num_warps, "num_stages": cfg.num_stages}
            try:
                src = ASTSource(fn=cfg.fn, signature=cfg.signature, constexprs=cfg.constexprs, attrs=cfg.attrs)
                compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                                          options={"num_warps": cfg.num_warps, "num_stages": cfg.num_stages})
                row["dynamic_shared"] = compiled.metadata.shared
                row.update(_resource_usage(compiled.asm["cubin"]))
                # PTX facts the interpreter cannot show (numpy keeps NaN through maximum)
                ptx = compiled.asm["ptx"]
                row["ptx_max_nan"] = ptx.count("max.NaN.f32")
                row["ptx_max_plain"] = ptx.count("max.f32")
            except Exception as e:  # reported per config by the test
                row["error"] = f"{type(e).__name__}: {str(e)[-2000:]}"
            results.append(row)
    return results


def binder_mismatches(name: str) -> list:
    """Configs of kernels/<name>.py whose signature, constexprs or hints differ from what Triton's
    JIT binder (the code a launch runs, for an sm_90 target) derives from the recorded launch."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    backend = make_backend(GPUTarget("cuda", 90, 32))
    module = importlib.import_module(f"maskformer_fast.kernels.{name}")
    mismatches = []
    for cfg in module.COMPILE_CONFIGS:
        args, kwargs = cfg.launch
        binder = create_function_from_signature(cfg.fn.signature, cfg.fn.params, backend)
        bound, specialization, _ = binder(*args, **kwargs)
        names = [p.name for p in cfg.fn.params]
        want = ({n: s[0] for n, s in zip(names, specialization)},
                {n: bound[n] for n, s in zip(names, specialization) if s[0] == "constexpr"},
                {(i,): backend.parse_attr(s[1]) for i, s in enumerate(specialization)
                 if isinstance(s[1], str) and backend.parse_attr(s[1])})
        got = (cfg.signature, cfg.constexprs, cfg.attrs)
        if repr(got) != repr(want):
            mismatches.append(f"{cfg.fn.__name__} ({cfg.config}): {got} != JIT {want}")
    return mismatches


def _run_in_subprocess(name: str, mode: str = "--json"):
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run([sys.executable, __file__, mode, name], capture_output=True, text=True, env=env,
                          cwd=str(KERNEL_DIR.parent))
    assert proc.returncode == 0, f"{mode} subprocess for {name} failed:\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout)


@pytest.mark.parametrize("module", kernel_module_names())
def test_compile_configs_cover_exactly_the_configs_table(module):
    from maskformer_fast.kernels._settings import FIXED_LAUNCH

    kernel_module = importlib.import_module(f"maskformer_fast.kernels.{module}")
    compiled = {cfg.config for cfg in kernel_module.COMPILE_CONFIGS} - {FIXED_LAUNCH}
    assert compiled == set(kernel_module.CONFIGS)


@pytest.mark.parametrize("module", kernel_module_names())
def test_compile_signatures_match_the_jit_binder(module):
    assert _run_in_subprocess(module, "--binder") == []


@pytest.mark.parametrize("module", kernel_module_names())
def test_kernel_module_compiles_for_sm90_and_sm80(module):
    results = _run_in_subprocess(module)
    errors = [r for r in results if "error" in r]
    assert not errors, "\n".join(f"{r.get('kernel')} sm_{r.get('arch')} {r.get('constexprs')}: {r['error']}"
                                 for r in errors)
    assert {r["arch"] for r in results} == set(ARCHS)
    too_big = [r for r in results if r["dynamic_shared"] + r.get("shared", 0) > MAX_SHARED_BYTES[r["arch"]]]
    assert not too_big, "\n".join(f"{r['kernel']} sm_{r['arch']} {r['constexprs']}: "
                                  f"{r['dynamic_shared'] + r.get('shared', 0)} B shared memory" for r in too_big)
    if module == "group_norm_act":
        # the ReLU must keep NaN (a group made NaN by an overflowed input), as torch.relu does:
        # plain max.f32 returns the other operand, 0
        relu = [r for r in results if r["kernel"] == "_gn_fwd_apply_kernel" and r["constexprs"]["RELU"]]
        assert relu and all(r["ptx_max_nan"] > 0 and r["ptx_max_plain"] == 0 for r in relu), relu


def _table(rows: list) -> str:
    lines = ["| kernel | config | dtype | constexprs | warps | arch | regs | stack B | shared B |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r.get('kernel', r['module'])} | {r.get('config')} | {r.get('dtype')} | "
                         f"{r.get('constexprs')} | | "
                         f"{r.get('arch')} | FAILED: {r['error'][:80]} | | |")
            continue
        cx = ", ".join(f"{k}={v}" for k, v in r["constexprs"].items())
        lines.append(f"| {r['kernel']} | {r['config']} | {r['dtype']} | {cx} | {r['num_warps']} | sm_{r['arch']} | "
                     f"{r.get('reg')} | {r.get('stack')} | {r['dynamic_shared'] + r.get('shared', 0)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    args = sys.argv[1:]
    names = [a for a in args if not a.startswith("--")] or kernel_module_names()
    if "--binder" in args:
        print(json.dumps([m for name in names for m in binder_mismatches(name)]))
    else:
        rows = [row for name in names for row in compile_module(name)]
        print(json.dumps(rows) if "--json" in args else _table(rows))
