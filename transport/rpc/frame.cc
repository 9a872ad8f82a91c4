// Frame encoding, validation and the incremental decoder (see frame.h).
#include "transport/rpc/frame.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace kvasir::transport::rpc {
namespace {

uint32_t LoadLe32(const char* p) {
  const auto* u = reinterpret_cast<const unsigned char*>(p);
  return uint32_t{u[0]} | uint32_t{u[1]} << 8 | uint32_t{u[2]} << 16 | uint32_t{u[3]} << 24;
}

bool ValidStatusCode(int32_t code) { return code >= 0 && code <= 16; }

}  // namespace

absl::Status ValidateFrame(const Frame& frame) {
  if (!ValidStatusCode(frame.status_code())) {
    return absl::InvalidArgumentError(absl::StrCat("bad status code ", frame.status_code()));
  }
  if (frame.method().size() > kMaxMethodBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("method name of ", frame.method().size(), " bytes"));
  }
  switch (frame.kind()) {
    case FRAME_KIND_HELLO:
    case FRAME_KIND_HELLO_ACK:
      if (frame.call_id() != 0) return absl::InvalidArgumentError("handshake frame with a call id");
      return absl::OkStatus();
    case FRAME_KIND_REQUEST:
      if (frame.method().empty()) return absl::InvalidArgumentError("request without a method");
      [[fallthrough]];
    case FRAME_KIND_RESPONSE:
    case FRAME_KIND_STREAM_MESSAGE:
    case FRAME_KIND_STREAM_END:
    case FRAME_KIND_CANCEL:
      if (frame.call_id() == 0) return absl::InvalidArgumentError("call frame without a call id");
      return absl::OkStatus();
    default:
      return absl::InvalidArgumentError(absl::StrCat("unknown frame kind ", frame.kind()));
  }
}

absl::StatusOr<std::string> EncodeFrame(const Frame& frame, size_t max_frame_bytes) {
  const size_t size = frame.ByteSizeLong();
  if (size > std::min(max_frame_bytes, kMaxFrameBytesLimit)) {
    return absl::ResourceExhaustedError(
        absl::StrCat("frame of ", size, " bytes is over the limit of ", max_frame_bytes));
  }
  std::string out(kFrameHeaderBytes + size, '\0');
  for (size_t i = 0; i < kFrameHeaderBytes; ++i)
    out[i] = static_cast<char>((size >> (8 * i)) & 0xff);
  if (!frame.SerializeToArray(out.data() + kFrameHeaderBytes, static_cast<int>(size))) {
    return absl::InternalError("frame serialization failed");
  }
  return out;
}

absl::Status FrameStatus(const Frame& frame) {
  if (frame.status_code() == 0) return absl::OkStatus();
  if (!ValidStatusCode(frame.status_code())) {
    return absl::InternalError(absl::StrCat("peer sent status code ", frame.status_code()));
  }
  return absl::Status(static_cast<absl::StatusCode>(frame.status_code()), frame.status_message());
}

void SetFrameStatus(const absl::Status& status, Frame* frame) {
  frame->set_status_code(static_cast<int32_t>(status.code()));
  frame->set_status_message(std::string(status.message()));
}

FrameDecoder::FrameDecoder(size_t max_frame_bytes)
    : max_frame_bytes_(std::min(max_frame_bytes, kMaxFrameBytesLimit)) {}

void FrameDecoder::Append(std::string_view bytes) {
  if (!error_.ok()) return;
  // Drop what was decoded before growing, so the buffer holds at most one partial frame plus
  // the new bytes.
  if (consumed_ > 0 && (consumed_ == buffer_.size() || consumed_ >= buffer_.size() / 2)) {
    buffer_.erase(0, consumed_);
    consumed_ = 0;
  }
  buffer_.append(bytes.data(), bytes.size());
}

absl::StatusOr<std::optional<Frame>> FrameDecoder::Next() {
  if (!error_.ok()) return error_;
  const size_t available = buffer_.size() - consumed_;
  if (available < kFrameHeaderBytes) return std::nullopt;
  const char* head = buffer_.data() + consumed_;
  const uint32_t size = LoadLe32(head);
  if (size == 0) {
    error_ = absl::InvalidArgumentError("empty frame");
    return error_;
  }
  if (size > max_frame_bytes_) {
    error_ = absl::ResourceExhaustedError(
        absl::StrCat("frame of ", size, " bytes is over the limit of ", max_frame_bytes_));
    return error_;
  }
  if (available - kFrameHeaderBytes < size) return std::nullopt;
  Frame frame;
  if (!frame.ParseFromArray(head + kFrameHeaderBytes, static_cast<int>(size))) {
    error_ = absl::InvalidArgumentError(absl::StrCat("malformed frame of ", size, " bytes"));
    return error_;
  }
  if (absl::Status valid = ValidateFrame(frame); !valid.ok()) {
    error_ = absl::InvalidArgumentError(absl::StrCat("invalid frame: ", valid.message()));
    return error_;
  }
  consumed_ += kFrameHeaderBytes + size;
  return std::optional<Frame>(std::move(frame));
}

}  // namespace kvasir::transport::rpc
