// One framed TCP connection of the control plane (internal to rpc/): reads frames through a
// FrameDecoder and writes queued frames in order. All methods run on the owning io_context's
// single thread. A malformed or oversized frame closes the connection with a logged reason.
#pragma once

#include <array>
#include <cstddef>
#include <deque>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "boost/asio/ip/tcp.hpp"
#include "transport/rpc/frame.h"

namespace kvasir::transport::rpc {

class Connection : public std::enable_shared_from_this<Connection> {
 public:
  using FrameHandler = std::function<void(Frame frame)>;
  // Called once, with the reason (OK for a local, orderly close).
  using CloseHandler = std::function<void(const absl::Status& reason)>;

  Connection(boost::asio::ip::tcp::socket socket, size_t max_frame_bytes, std::string peer);
  ~Connection();
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  // Starts reading. The handlers run on the io thread and may call Send/Close.
  void Start(FrameHandler on_frame, CloseHandler on_close);

  // Queues `frame`. ResourceExhausted when it is over the frame limit (nothing is sent),
  // FailedPrecondition after Close.
  absl::Status Send(const Frame& frame);

  // Closes the socket now and calls the close handler with `reason` (logged when not OK).
  // Idempotent.
  void Close(const absl::Status& reason);
  // Closes once every queued frame has been written (to deliver a refusal before closing).
  void CloseAfterFlush(const absl::Status& reason);

  bool closed() const { return closed_; }
  const std::string& peer() const { return peer_; }
  size_t queued_bytes() const { return queued_bytes_; }

 private:
  void DoRead();
  void DoWrite();

  boost::asio::ip::tcp::socket socket_;
  size_t max_frame_bytes_;
  std::string peer_;
  FrameDecoder decoder_;
  std::array<char, 64 * 1024> read_buffer_;
  std::deque<std::string> write_queue_;
  size_t queued_bytes_ = 0;
  bool writing_ = false;
  bool closed_ = false;
  bool close_after_flush_ = false;
  absl::Status pending_close_reason_;
  FrameHandler on_frame_;
  CloseHandler on_close_;
};

}  // namespace kvasir::transport::rpc
