// The assignment micro-kernels for the baseline instruction set (any x86-64 / other CPU); see assign_kernel.h.
#include "cpu/kernels.h"

#define PQ_KERNEL_NS generic
#include "cpu/assign_kernel.h"
