"""Triton kernels, imported as ``maskformer_fast.kernels``.

One file per op: the ``@triton.jit`` kernel(s), launchers registered as custom ops
(``_library.launcher_op``) and, for differentiable ops, a ``torch.autograd.Function``; the
eager twin of each lives in ``maskformer_fast.reference`` and ``maskformer_fast.ops``
chooses between them (each module's ``unsupported(...)`` is the one validation of its op). The
exception to the custom ops is ``hungarian``, the GPU matcher: a plain launcher with one host
sync by design (its twins: the scipy reference and the C++ solver ``maskformer_fast._C``);
train.py compiles the model, not the criterion. ``attention.dropout_keep_mask`` (a test/debug helper) is not a custom op either.
Importing a kernel module imports Triton; nothing touches a GPU at import time.
"""
