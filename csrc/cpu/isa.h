// The widest instruction-set copy of the CPU kernels this process runs (assign_kernel.h, assign_gemm_kernel.h).
#pragma once

namespace pqgan::cpu {

// "avx512", "avx2" or "generic" by what the CPU and this build support; PQGAN_CPU_ISA=generic|avx2|avx512 caps it
// (read once per process; used by the tests and to compare the copies).
enum class Isa { generic, avx2, avx512 };
Isa isa();

}  // namespace pqgan::cpu
