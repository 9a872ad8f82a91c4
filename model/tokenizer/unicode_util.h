// Private UTF-8 helpers of the tokenizers: strict decoding with U+FFFD replacement, the GPT-2
// byte <-> code point table of byte-level BPE, and the byte length rule llama.cpp uses to cut
// SentencePiece input into symbols. Nothing here allocates except the string builders.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace kvasir::model::internal {

inline constexpr uint32_t kReplacementChar = 0xFFFD;

// Appends the UTF-8 encoding of `cp` (which must be <= 0x10FFFF).
void AppendUtf8(uint32_t cp, std::string* out);

// Length of the character that starts with `lead`, from its high nibble only (1 for stray
// continuation bytes, 4 for 0xF8..0xFF), as llama.cpp's unicode_len_utf8. Never 0.
inline size_t Utf8LenFromLead(uint8_t lead) {
  static constexpr uint8_t kLen[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
  return kLen[lead >> 4];
}

// Result of looking at the bytes at some position of a buffer.
enum class Utf8Status {
  kValid,       // a complete, well-formed character of `length` bytes
  kIncomplete,  // the buffer ends inside a character that could still be well-formed
  kInvalid,     // ill-formed: `length` bytes (>= 1) form one maximal ill-formed subpart
};

struct Utf8Char {
  Utf8Status status;
  size_t length;
  uint32_t cp;  // valid characters only
};

// Decodes the character at text[pos] (pos < text.size()) strictly: no overlong forms, no
// surrogates, nothing above U+10FFFF. Ill-formed input is reported as the Unicode "maximal
// subpart" so that each one becomes a single U+FFFD.
Utf8Char DecodeUtf8(std::string_view text, size_t pos);

// `text` with every ill-formed subpart replaced by U+FFFD (EF BF BD); well-formed input comes
// back unchanged. A buffer ending mid-character also gets one U+FFFD for the tail.
std::string SanitizeUtf8(std::string_view text);
bool IsValidUtf8(std::string_view text);

// GPT-2 bytes_to_unicode: the code point that byte `b` is written as in byte-level vocabularies.
uint32_t ByteToUnicode(uint8_t b);
// The inverse: the byte of code point `cp`, or -1 when `cp` is not one of the 256.
int UnicodeToByte(uint32_t cp);

// Byte-level encoding of a UTF-8 string (each byte -> its code point, UTF-8 encoded), and back.
// The decoder passes through code points that are not in the table unchanged.
std::string ByteLevelEncode(std::string_view bytes);
std::string ByteLevelDecode(std::string_view text);

// "<0x0A>" -> 10; -1 when `piece` is not of the exact form <0xHH> (upper- or lower-case hex).
int ParseByteToken(std::string_view piece);

}  // namespace kvasir::model::internal
