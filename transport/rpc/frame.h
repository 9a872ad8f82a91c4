// Framing of the control plane: a 4-byte little-endian payload length, then one serialized
// `Frame` proto. FrameDecoder turns untrusted bytes into validated frames and never reads past
// what it was given; anything malformed or over the size limit is an error, after which the
// decoder refuses more input (the connection is closed with that reason).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "transport/rpc/rpc.pb.h"

namespace kvasir::transport::rpc {

// Bytes of the length prefix.
inline constexpr size_t kFrameHeaderBytes = 4;
// Default and hard upper bound of one frame's payload (the serialized Frame).
inline constexpr size_t kDefaultMaxFrameBytes = 16u << 20;
inline constexpr size_t kMaxFrameBytesLimit = 1u << 30;
// Longest method name accepted.
inline constexpr size_t kMaxMethodBytes = 256;

// Checks the fields a frame of its kind must have (call ids, method names, status codes).
absl::Status ValidateFrame(const Frame& frame);

// Serializes `frame` with its length prefix. ResourceExhausted when the serialized frame is larger
// than max_frame_bytes.
absl::StatusOr<std::string> EncodeFrame(const Frame& frame, size_t max_frame_bytes);

// The status carried by a RESPONSE, STREAM_END or HELLO_ACK frame.
absl::Status FrameStatus(const Frame& frame);
// Stores `status` into the frame's status fields.
void SetFrameStatus(const absl::Status& status, Frame* frame);

// Incremental decoder for one byte stream. Not thread-safe; one per connection.
//
//   FrameDecoder decoder(max_frame_bytes);
//   decoder.Append(bytes_from_socket);
//   while (true) {
//     absl::StatusOr<std::optional<Frame>> next = decoder.Next();
//     if (!next.ok()) { close(next.status()); break; }
//     if (!next->has_value()) break;  // need more bytes
//     Handle(**next);
//   }
class FrameDecoder {
 public:
  explicit FrameDecoder(size_t max_frame_bytes = kDefaultMaxFrameBytes);

  // Adds bytes read from the stream. Ignored after an error.
  void Append(std::string_view bytes);

  // The next whole, valid frame; nullopt when more bytes are needed; an error (InvalidArgument for
  // a malformed frame, ResourceExhausted for one over the limit) that repeats on every later call.
  absl::StatusOr<std::optional<Frame>> Next();

  // Bytes received but not yet decoded.
  size_t buffered_bytes() const { return buffer_.size() - consumed_; }

 private:
  size_t max_frame_bytes_;
  std::string buffer_;
  size_t consumed_ = 0;  // bytes at the front of buffer_ already decoded
  absl::Status error_;
};

}  // namespace kvasir::transport::rpc
