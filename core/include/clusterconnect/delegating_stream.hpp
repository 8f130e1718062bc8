#pragma once
// A stream that passes every call on to another one: the base of wrappers
// that add to a stream (counting it, say) without changing what it does.
// Every virtual of Stream is forwarded here, so a wrapper forwards one added
// later without being told.

#include <utility>

#include "clusterconnect/stream.hpp"

namespace clusterconnect {

class DelegatingStream : public Stream {
 public:
  explicit DelegatingStream(StreamPtr inner) : inner_(std::move(inner)) {}

  asio::any_io_executor get_executor() override { return inner_->get_executor(); }
  void async_read_some(asio::mutable_buffer b, IoHandler h) override { inner_->async_read_some(b, std::move(h)); }
  void async_write_some(std::span<const asio::const_buffer> b, IoHandler h) override {
    inner_->async_write_some(b, std::move(h));
  }
  void async_shutdown_send(DoneHandler h) override { inner_->async_shutdown_send(std::move(h)); }
  void reset(std::string_view reason) noexcept override { inner_->reset(reason); }
  std::string describe() const override { return inner_->describe(); }
  bool reusable() const noexcept override { return inner_->reusable(); }

 protected:
  const StreamPtr& inner() const noexcept { return inner_; }

 private:
  StreamPtr inner_;
};

}  // namespace clusterconnect
