// isa(): see isa.h.
#include "cpu/isa.h"

#include <cstdlib>
#include <string>

#include "cpu/assign_tiles.h"

namespace pqgan::cpu {

Isa isa() {
  static const Isa value = [] {
    Isa best = have_avx512() ? Isa::avx512 : have_avx2() ? Isa::avx2 : Isa::generic;
    const char* env = std::getenv("PQGAN_CPU_ISA");
    const std::string cap = env == nullptr ? "" : env;
    if (cap == "generic") return Isa::generic;
    if (cap == "avx2" && best == Isa::avx512) return Isa::avx2;
    return best;
  }();
  return value;
}

}  // namespace pqgan::cpu
