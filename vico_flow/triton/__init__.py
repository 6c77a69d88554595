"""Triton kernels of the tropical products (backend "triton").

Run on CUDA tensors; on a machine without a GPU they run through Triton's
interpreter when TRITON_INTERPRET=1 is set before this package is imported
(the test suite does this), on CPU tensors and at small sizes only.
"""
