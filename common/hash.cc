#include "common/hash.h"

#include <xxhash.h>

namespace kvasir {

uint64_t Xxh3(const void* data, size_t size, uint64_t seed) {
  return XXH3_64bits_withSeed(data, size, seed);
}

}  // namespace kvasir
