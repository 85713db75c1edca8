"""Triton kernels of msa_fast (installed as ``msa_fast.kernels``): Philox helpers, cutoff, hard_concrete.

Each module exposes plain launchers made only of torch ops and ``torch.library.wrap_triton(kernel)[grid](...)``
launches, so ``msa_fast.ops`` can wrap them in ``torch.library.triton_op``. On CPU they run only under
``TRITON_INTERPRET=1`` (set before triton is imported); ``MSA_FAST_AUTOTUNE=0`` keeps one config per kernel.
"""
