// Framed connection (see connection.h).
#include "transport/rpc/connection.h"

#include <utility>

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
        if (self->closed_) return;
        if (ec) {
          self->Close(ec == asio::error::eof ? absl::UnavailableError("peer closed the connection")
                                             : absl::UnavailableError("read: " + ec.message()));
          return;
        }
        self->decoder_.Append(std::string_view(self->read_buffer_.data(), n));
        const FrameHandler on_frame = self->on_frame_;
        while (!self->closed_) {
          absl::StatusOr<std::optional<Frame>> next = self->decoder_.Next();
          if (!next.ok()) {
            self->Close(next.status());
            return;
          }
          if (!next->has_value()) break;
          on_frame(std::move(**next));
        }
        if (!self->closed_) self->DoRead();
      });
}

absl::Status Connection::Send(const Frame& frame) {
  if (closed_ || close_after_flush_) return absl::FailedPreconditionError("connection closed");
  absl::StatusOr<std::string> bytes = EncodeFrame(frame, max_frame_bytes_);
  if (!bytes.ok()) return bytes.status();
  queued_bytes_ += bytes->size();
  write_queue_.push_back(*std::move(bytes));
  if (!writing_) DoWrite();
  return absl::OkStatus();
}

void Connection::DoWrite() {
  if (write_queue_.empty()) {
    writing_ = false;
    if (close_after_flush_) Close(pending_close_reason_);
    return;
  }
  writing_ = true;
  asio::async_write(socket_, asio::buffer(write_queue_.front()),
                    [self = shared_from_this()](const boost::system::error_code& ec, size_t) {
                      if (self->closed_) return;
                      if (ec) {
                        self->Close(absl::UnavailableError("write: " + ec.message()));
                        return;
                      }
                      self->queued_bytes_ -= self->write_queue_.front().size();
                      self->write_queue_.pop_front();
                      self->DoWrite();
                    });
}

void Connection::Close(const absl::Status& reason) {
  if (closed_) return;
  closed_ = true;
  if (absl::IsUnavailable(reason)) {
    KVASIR_LOG_SUBSYS(INFO, kTransport, "rpc connection closed peer=%s reason=%s", peer_,
                      reason.ToString());
  } else if (!reason.ok()) {
    KVASIR_LOG_SUBSYS(WARN, kTransport, "rpc connection closed peer=%s reason=%s", peer_,
                      reason.ToString());
  }
  boost::system::error_code ec;
  socket_.shutdown(asio::ip::tcp::socket::shutdown_both, ec);
  socket_.close(ec);
  write_queue_.clear();
  queued_bytes_ = 0;
  on_frame_ = nullptr;  // DoRead runs a copy, so this may happen inside the handler
  if (on_close_) {
    CloseHandler handler = std::move(on_close_);
    on_close_ = nullptr;
    handler(reason);
  }
}

void Connection::CloseAfterFlush(const absl::Status& reason) {
  if (closed_ || close_after_flush_) return;
  close_after_flush_ = true;
  pending_close_reason_ = reason;
  if (!writing_) Close(reason);
}

}  // namespace kvasir::transport::rpc
