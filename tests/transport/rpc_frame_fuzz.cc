// Fuzz target for the control plane's frame decoder: arbitrary bytes, fed whole and in small
// pieces, must decode to valid frames or to an error, never crash or read out of bounds.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "transport/rpc/frame.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using kvasir::transport::rpc::FrameDecoder;
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  for (size_t chunk : {size_t{0}, size_t{1}, size_t{7}}) {
    FrameDecoder decoder(/*max_frame_bytes=*/1 << 16);
    size_t fed = 0;
    while (true) {
      const size_t n = chunk == 0 ? bytes.size() - fed : std::min(chunk, bytes.size() - fed);
      decoder.Append(bytes.substr(fed, n));
      fed += n;
      bool stop = false;
      while (true) {
        auto next = decoder.Next();
        if (!next.ok()) {
          stop = true;
          break;
        }
        if (!next->has_value()) break;
        // A decoded frame must be valid and re-encodable.
        if (!kvasir::transport::rpc::ValidateFrame(**next).ok()) __builtin_trap();
        if (!kvasir::transport::rpc::EncodeFrame(**next, 1 << 16).ok()) __builtin_trap();
      }
      if (stop || fed >= bytes.size()) break;
    }
  }
  return 0;
}
