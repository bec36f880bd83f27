"""The machine and every installed package's version, printed and written as JSON (gpu_suite.sh's first step).

    python benchmarks/suite_env.py OUT.json

Each probe is guarded: a torch that does not import is itself the finding, and must not stop
the record of everything else.
"""
import json
import platform
import sys
import time
from importlib import metadata


def probe_torch(env):
    import torch

    env.update(torch=torch.__version__, cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
               cuda_available=torch.cuda.is_available())
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(device=props.name, capability=f"{props.major}.{props.minor}",
                   memory_gib=round(props.total_memory / 2**30, 1), sms=props.multi_processor_count)
    else:
        env["device"] = f"cpu ({platform.machine()})"


def probe_triton(env):
    import triton

    env["triton"] = triton.__version__


def main(argv):
    env = {"date": time.strftime("%Y-%m-%d"), "python": sys.version.split()[0], "platform": platform.platform(),
           "packages": sorted(f"{d.metadata['Name']}=={d.version}" for d in metadata.distributions())}
    for probe in (probe_torch, probe_triton):
        try:
            probe(env)
        except Exception as e:  # noqa: BLE001 (any failure is the record)
            env[f"{probe.__name__}_error"] = f"{type(e).__name__}: {e}"
    print("\n".join(env["packages"]))
    print(json.dumps({k: v for k, v in env.items() if k != "packages"}, indent=1))
    with open(argv[0], "w") as f:
        json.dump(env, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1:])
