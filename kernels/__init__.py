"""Triton kernels of sslfast (installed as `sslfast.kernels`; in a checkout, sslfast/kernels is
a link to this folder). Only @triton.jit functions and their config lists live here: the
host-side launch code is in sslfast/ops. Importing this package does not import Triton."""
