// The Python module pqgan_kernels._C. Importing it loads this library, whose TORCH_LIBRARY blocks register the
// native ops under torch.ops.pqgan_native (CPU kernels in csrc/cpu/, CUDA kernels in csrc/cuda/).
#include <Python.h>
#include <torch/library.h>

#include <string>

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "pqgan native kernels", -1, nullptr};
  return PyModule_Create(&module_def);
}
}

namespace pqgan {

// Which parts were compiled in: "cpu" or "cpu+cuda".
std::string build_info() {
#ifdef PQGAN_WITH_CUDA
  return "cpu+cuda";
#else
  return "cpu";
#endif
}

TORCH_LIBRARY_FRAGMENT(pqgan_native, m) {
  m.def("build_info() -> str", &build_info);
}

}  // namespace pqgan
