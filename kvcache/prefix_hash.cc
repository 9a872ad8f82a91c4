#include "kvcache/prefix_hash.h"

#include <cstring>

#include "common/hash.h"

namespace kvasir::kvcache {

uint64_t PrefixHashSeed() { return Xxh3(kPrefixHashDomain, 0); }

uint64_t PrefixHashNext(uint64_t prev, std::span<const int32_t> block) {
  // Little-endian bytes regardless of the host (x86 and ARM are little-endian; the loop keeps the
  // definition explicit).
  uint8_t stack_buf[8 + 4 * 64];
  std::vector<uint8_t> heap_buf;
  const size_t size = 8 + 4 * block.size();
  uint8_t* buf = stack_buf;
  if (size > sizeof stack_buf) {
    heap_buf.resize(size);
    buf = heap_buf.data();
  }
  for (int i = 0; i < 8; ++i) buf[i] = static_cast<uint8_t>(prev >> (8 * i));
  for (size_t t = 0; t < block.size(); ++t) {
    const uint32_t v = static_cast<uint32_t>(block[t]);
    for (int i = 0; i < 4; ++i) buf[8 + 4 * t + i] = static_cast<uint8_t>(v >> (8 * i));
  }
  return Xxh3(buf, size, 0);
}

std::vector<uint64_t> PrefixHashes(std::span<const int32_t> tokens, int32_t block_tokens) {
  std::vector<uint64_t> out;
  if (block_tokens <= 0) return out;
  uint64_t h = PrefixHashSeed();
  for (size_t begin = 0; begin + block_tokens <= tokens.size(); begin += block_tokens) {
    h = PrefixHashNext(h, tokens.subspan(begin, block_tokens));
    out.push_back(h);
  }
  return out;
}

uint64_t PrefixHashTestVector() {
  int32_t tokens[64];
  for (int i = 0; i < 64; ++i) tokens[i] = i;
  return PrefixHashes(tokens, 16).back();
}

}  // namespace kvasir::kvcache
