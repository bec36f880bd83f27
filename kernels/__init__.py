"""Triton kernels, imported as ``maskformer_fast.kernels``.

One file per op: the ``@triton.jit`` kernel(s), plain launchers, and a
``torch.autograd.Function``; the eager twin of each lives in ``maskformer_fast.reference``
and ``maskformer_fast.ops`` chooses between them. Importing a kernel module imports
Triton; nothing touches a GPU at import time.
"""
