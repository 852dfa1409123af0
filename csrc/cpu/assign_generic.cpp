// The assignment micro-kernels for the baseline instruction set (any x86-64 / other CPU); see assign_kernel.h.
#include "cpu/assign_tiles.h"

// 32-byte vector types inside static functions only: the ABI note about AVX vector returns does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"
#define PQ_KERNEL_NS generic
#include "cpu/assign_kernel.h"
