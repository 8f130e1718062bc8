#pragma once
// A Stream decorator that keeps the active-streams gauge exact: it counts
// from construction to destruction of the stream being served.

#include "agent_metrics.hpp"
#include "clusterconnect/stream.hpp"

namespace clusterconnect::agent {

class CountedStream final : public Stream {
 public:
  CountedStream(StreamPtr inner, std::shared_ptr<AgentMetrics> metrics) : inner_(std::move(inner)), metrics_(std::move(metrics)) {
    metrics_->stream_opened();
  }
  ~CountedStream() override { metrics_->stream_closed(); }
  asio::any_io_executor get_executor() override { return inner_->get_executor(); }
  void async_read_some(asio::mutable_buffer b, IoHandler h) override { inner_->async_read_some(b, std::move(h)); }
  void async_write_some(std::span<const asio::const_buffer> b, IoHandler h) override {
    inner_->async_write_some(b, std::move(h));
  }
  void async_shutdown_send(DoneHandler h) override { inner_->async_shutdown_send(std::move(h)); }
  void reset(std::string_view reason) noexcept override { inner_->reset(reason); }
  std::string describe() const override { return inner_->describe(); }

 private:
  StreamPtr inner_;
  std::shared_ptr<AgentMetrics> metrics_;
};

}  // namespace clusterconnect::agent
