"""Kernel launchers as torch custom ops, so torch.compile sees each launch as one opaque node.

Traced by Dynamo, a launcher's Python (allocations, grid arithmetic, a Triton launch, and
under ``TRITON_INTERPRET=1`` the interpreter itself) either breaks the graph or fails. As a
``torch.library.custom_op`` with a fake (shape-only) implementation the launch is one node
of the graph, in forward and, called from an ``autograd.Function``'s backward, in backward.

Outside tracing the launcher runs directly: the dispatcher's per-call overhead buys nothing
in eager mode, where the decoder makes dozens of small attention and GroupNorm calls.

Every launcher ends with a keyword ``config`` (a launch configuration of its module's
``CONFIGS``; None: the module's ``pick``). It is not part of the op's schema: under
torch.compile the launcher picks.
"""
import inspect
from typing import Callable, Dict

import torch

__all__ = ["launcher_op", "LAUNCHERS"]

NAMESPACE = "maskformer_fast"
LAUNCHERS: Dict[str, Callable] = {}  # name -> launcher, every one registered (opcheck covers them all)


def launcher_op(name: str, fake: Callable) -> Callable[[Callable], Callable]:
    """Decorator: register ``fn`` (whose last parameter is ``config=None``) as the custom op
    ``maskformer_fast::name`` without that parameter (no input mutated, ``fake`` its shape
    function) and return a callable that is ``fn`` in eager mode and the op while
    torch.compile traces. The op itself is the returned callable's ``.op``."""
    def register(fn: Callable) -> Callable:
        signature = inspect.signature(fn)
        *arguments, config = signature.parameters.values()
        assert config.name == "config" and config.default is None, f"{fn.__name__} must end with config=None"

        def launch(*args):
            return fn(*args)

        launch.__name__, launch.__doc__ = fn.__name__, fn.__doc__
        launch.__signature__ = signature.replace(parameters=arguments)
        op = torch.library.custom_op(f"{NAMESPACE}::{name}", launch, mutates_args=())
        op.register_fake(fake)

        def call(*args, config=None):
            if torch.compiler.is_compiling():
                assert config is None, f"{name}: no explicit launch config under torch.compile"
                return op(*args)
            return fn(*args, config=config)

        call.op = op
        call.__name__, call.__doc__ = fn.__name__, fn.__doc__
        LAUNCHERS[name] = call
        return call
    return register
