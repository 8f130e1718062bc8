#pragma once
// What every rendezvous leg shares, in either form: one strand, a timer that
// bounds the whole attempt by closing the leg's socket, a handler that runs
// once, and the session made over the finished TLS stream.

#include <chrono>
#include <memory>
#include <string>
#include <utility>

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>

#include "legs.hpp"

namespace clusterconnect::tunnel::transport {

class LegBase : public std::enable_shared_from_this<LegBase> {
 public:
  virtual ~LegBase() = default;

 protected:
  LegBase(asio::io_context& io, std::shared_ptr<spdlog::logger> logger, LegHandler handler, std::chrono::milliseconds timeout)
      : strand_(asio::make_strand(io)),
        resolver_(strand_),
        timer_(strand_),
        logger_(std::move(logger)),
        timeout_(timeout),
        handler_(std::move(handler)) {}

  // Closes whatever socket the leg holds now; the pending operation fails.
  virtual void close_socket() = 0;

  void arm_timer() {
    timer_.expires_after(timeout_);
    timer_.async_wait([weak = weak_from_this()](error_code ec) {
      auto self = weak.lock();
      if (ec || !self) return;
      self->timed_out_ = true;
      self->close_socket();
    });
  }

  // ec's message, or that the attempt ran out of time (which is why ec came).
  std::string describe(error_code ec) const {
    return timed_out_ ? "no answer within " + std::to_string(timeout_.count() / 1000) + " s" : ec.message();
  }

  void fail(error_code ec, std::string reason) {
    timer_.cancel();
    close_socket();
    if (handler_) std::exchange(handler_, nullptr)(timed_out_ ? asio::error::timed_out : ec, nullptr, std::move(reason));
  }

  void succeed(std::unique_ptr<tunnel::MessageChannel> channel, tunnel::SessionOptions options) {
    timer_.cancel();
    auto session = tunnel::Session::create(strand_, std::move(channel), std::move(options), logger_);
    if (handler_) std::exchange(handler_, nullptr)({}, std::move(session), {});
  }

  template <class Derived>
  std::shared_ptr<Derived> self_as() {
    return std::static_pointer_cast<Derived>(shared_from_this());
  }

  asio::strand<asio::io_context::executor_type> strand_;
  asio::ip::tcp::resolver resolver_;
  asio::steady_timer timer_;
  std::shared_ptr<spdlog::logger> logger_;
  const std::chrono::milliseconds timeout_;

 private:
  LegHandler handler_;
  bool timed_out_ = false;
};

}  // namespace clusterconnect::tunnel::transport
