// Framed connection (see connection.h).
#include "transport/rpc/connection.h"

#include <sys/socket.h>

#include <utility>

#include "boost/asio/post.hpp"
#include "boost/asio/write.hpp"
#include "common/log.h"
#include "common/strings.h"

namespace kvasir::transport::rpc {

namespace asio = boost::asio;

Connection::Connection(asio::ip::tcp::socket socket, size_t max_frame_bytes, std::string peer)
    : socket_(std::move(socket)),
      max_frame_bytes_(max_frame_bytes),
      peer_(std::move(peer)),
      decoder_(max_frame_bytes) {
  boost::system::error_code ec;
  socket_.set_option(asio::ip::tcp::no_delay(true), ec);
}

Connection::~Connection() {
  boost::system::error_code ec;
  socket_.close(ec);
}

void Connection::Start(FrameHandler on_frame, CloseHandler on_close) {
  on_frame_ = std::move(on_frame);
  on_close_ = std::move(on_close);
  DoRead();
}

void Connection::DoRead() {
  socket_.async_read_some(
      asio::buffer(read_buffer_),
      [self = shared_from_this()](const boost::system::error_code& ec, size_t n) {
        if (self->closed()) return;
        if (ec) {
          self->Close(ec == asio::error::eof ? absl::UnavailableError("peer closed the connection")
                                             : absl::UnavailableError("read: " + ec.message()));
          return;
        }
        self->decoder_.Append(std::string_view(self->read_buffer_.data(), n));
        const FrameHandler on_frame = self->on_frame_;
        while (!self->closed()) {
          absl::StatusOr<std::optional<Frame>> next = self->decoder_.Next();
          if (!next.ok()) {
            self->Close(next.status());
            return;
          }
          if (!next->has_value()) break;
          on_frame(std::move(**next));
        }
        if (!self->closed()) self->DoRead();
      });
}

absl::Status Connection::Send(const Frame& frame) {
  absl::StatusOr<std::string> bytes = EncodeFrame(frame, max_frame_bytes_);
  absl::MutexLock lock(&write_mu_);
  if (closed_.load(std::memory_order_relaxed) || close_after_flush_) {
    return absl::FailedPreconditionError("connection closed");
  }
  if (!bytes.ok()) return bytes.status();
  if (!writing_) {
    // Nothing queued: write now, from this thread. What the socket does not take (or an error,
    // which the I/O thread's write then reports) goes to the queue.
    const ssize_t n =
        ::send(socket_.native_handle(), bytes->data(), bytes->size(), MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n > 0 && static_cast<size_t>(n) == bytes->size()) return absl::OkStatus();
    front_written_ = n > 0 ? static_cast<size_t>(n) : 0;
    writing_ = true;
    asio::post(socket_.get_executor(), [self = shared_from_this()] { self->DoWrite(); });
  }
  write_queue_.push_back(*std::move(bytes));
  return absl::OkStatus();
}

void Connection::DoWrite() {
  std::string_view front;
  {
    absl::MutexLock lock(&write_mu_);
    if (closed_.load(std::memory_order_relaxed)) return;
    if (write_queue_.empty()) {
      writing_ = false;
      if (!close_after_flush_) return;
    } else {
      // Deque elements stay put while others are appended.
      front = std::string_view(write_queue_.front()).substr(front_written_);
      front_written_ = 0;
    }
  }
  if (front.empty()) {  // the queue ran dry with a close waiting for it
    Close(pending_close_reason_);
    return;
  }
  asio::async_write(socket_, asio::buffer(front.data(), front.size()),
                    [self = shared_from_this()](const boost::system::error_code& ec, size_t) {
                      if (self->closed()) return;
                      if (ec) {
                        self->Close(absl::UnavailableError("write: " + ec.message()));
                        return;
                      }
                      {
                        absl::MutexLock lock(&self->write_mu_);
                        self->write_queue_.pop_front();
                      }
                      self->DoWrite();
                    });
}

void Connection::Close(const absl::Status& reason) {
  {
    absl::MutexLock lock(&write_mu_);
    if (closed_.load(std::memory_order_relaxed)) return;
    closed_.store(true, std::memory_order_release);
    boost::system::error_code ec;
    socket_.shutdown(asio::ip::tcp::socket::shutdown_both, ec);
    socket_.close(ec);
    write_queue_.clear();
  }
  if (absl::IsUnavailable(reason)) {
    KVASIR_LOG_SUBSYS(INFO, kTransport, "rpc connection closed peer=%s reason=%s", peer_,
                      reason.ToString());
  } else if (!reason.ok()) {
    KVASIR_LOG_SUBSYS(WARN, kTransport, "rpc connection closed peer=%s reason=%s", peer_,
                      reason.ToString());
  }
  on_frame_ = nullptr;  // DoRead runs a copy, so this may happen inside the handler
  if (on_close_) {
    CloseHandler handler = std::move(on_close_);
    on_close_ = nullptr;
    handler(reason);
  }
}

void Connection::CloseAfterFlush(const absl::Status& reason) {
  {
    absl::MutexLock lock(&write_mu_);
    if (closed_.load(std::memory_order_relaxed) || close_after_flush_) return;
    close_after_flush_ = true;
    pending_close_reason_ = reason;
    if (writing_) return;  // DoWrite closes once the queue is empty
  }
  Close(reason);
}

}  // namespace kvasir::transport::rpc
