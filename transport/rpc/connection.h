// One framed TCP connection of the control plane (internal to rpc/): reads frames through a
// FrameDecoder and writes frames in order. Send may be called from any thread: when nothing is
// queued it writes the frame to the socket at once from the calling thread (a caller need not wait
// for the I/O thread to wake up), and queues what the socket does not take for the I/O thread.
// Everything else runs on the owning io_context's single thread. A malformed or oversized frame
// closes the connection with a logged reason.
#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <deque>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
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

  // Writes or queues `frame`; any thread. ResourceExhausted when it is over the frame limit
  // (nothing is sent), FailedPrecondition after Close. Write errors close the connection (on the
  // I/O thread).
  absl::Status Send(const Frame& frame);

  // Closes the socket now and calls the close handler with `reason` (logged when not OK).
  // Idempotent.
  void Close(const absl::Status& reason);
  // Closes once every queued frame has been written (to deliver a refusal before closing).
  void CloseAfterFlush(const absl::Status& reason);

  bool closed() const { return closed_.load(std::memory_order_acquire); }
  const std::string& peer() const { return peer_; }

 private:
  void DoRead();
  void DoWrite();  // I/O thread

  boost::asio::ip::tcp::socket socket_;
  size_t max_frame_bytes_;
  std::string peer_;
  FrameDecoder decoder_;
  std::array<char, 64 * 1024> read_buffer_;
  // The write side, shared by the sending threads and the I/O thread. The socket is closed under
  // write_mu_ too, so a direct write never reaches a descriptor that was closed and reused.
  absl::Mutex write_mu_;
  std::deque<std::string> write_queue_ ABSL_GUARDED_BY(write_mu_);  // front: being written
  size_t front_written_ ABSL_GUARDED_BY(write_mu_) = 0;  // of the front, sent by Send already
  bool writing_ ABSL_GUARDED_BY(write_mu_) = false;      // the I/O thread owns the write side
  bool close_after_flush_ ABSL_GUARDED_BY(write_mu_) = false;
  std::atomic<bool> closed_{false};
  absl::Status pending_close_reason_;  // I/O thread
  FrameHandler on_frame_;
  CloseHandler on_close_;
};

}  // namespace kvasir::transport::rpc
