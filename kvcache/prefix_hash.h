// The prefix hash chain: one 64-bit hash per block of tokens, each hash covering every token
// from the start of the sequence up to the end of its block. Two requests that share their first
// n blocks share the first n hashes, so a hash names "this exact prefix" in the cachestore's
// index, on every process and machine (docs/kvcache.md has the definition and test vectors):
//
//   h[0]   = XXH3_64(kPrefixHashDomain)                     (seed 0)
//   h[i+1] = XXH3_64(le64(h[i]) || le32(token) for the block_tokens tokens of block i)   (seed 0)
//
// Only whole blocks are hashed; PrefixHashes returns h[1..n] for the n whole blocks.
#pragma once

#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

namespace kvasir::kvcache {

inline constexpr std::string_view kPrefixHashDomain = "kvasir-prefix-v1";
inline constexpr int32_t kDefaultHashBlockTokens = 16;

// Hashes of the whole blocks of `tokens` (tokens.size() / block_tokens of them).
std::vector<uint64_t> PrefixHashes(std::span<const int32_t> tokens,
                                   int32_t block_tokens = kDefaultHashBlockTokens);
// h[0], the hash of the empty prefix.
uint64_t PrefixHashSeed();
// One link: the hash after appending `block` to a prefix whose hash is `prev`.
uint64_t PrefixHashNext(uint64_t prev, std::span<const int32_t> block);

// The handshake test vector (transport peers compare it before they exchange KV): the last hash
// of the tokens 0, 1, ..., 63 in blocks of 16.
uint64_t PrefixHashTestVector();

}  // namespace kvasir::kvcache
