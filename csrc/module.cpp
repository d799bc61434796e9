// The Python module sslfast._C and the `sslfast` operator namespace.
//
// Importing sslfast._C runs the static registrations of every file in csrc/: this file claims
// the namespace with TORCH_LIBRARY(sslfast, m); each op declares its schema next to its kernels
// with TORCH_LIBRARY_FRAGMENT(sslfast, m) and registers its CUDA implementation with
// TORCH_LIBRARY_IMPL(sslfast, CUDA, m), so ops can be added without touching this file. Python
// reaches them as torch.ops.sslfast.<op>; the module itself exports nothing.
#include <Python.h>
#include <torch/library.h>

extern "C" {
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module = {
      PyModuleDef_HEAD_INIT, "_C", "sslfast's compiled CUDA ops, exposed as torch.ops.sslfast.*", -1, nullptr};
  return PyModule_Create(&module);
}
}

TORCH_LIBRARY(sslfast, m) {
  // Schemas live with their kernels (TORCH_LIBRARY_FRAGMENT in each op's file).
}
