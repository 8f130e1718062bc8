#pragma once
// A Stream decorator that keeps the active-streams gauge exact: it counts
// from construction to destruction of the stream being served.

#include "agent_metrics.hpp"
#include "clusterconnect/delegating_stream.hpp"

namespace clusterconnect::agent {

class CountedStream final : public DelegatingStream {
 public:
  CountedStream(StreamPtr inner, std::shared_ptr<AgentMetrics> metrics)
      : DelegatingStream(std::move(inner)), metrics_(std::move(metrics)) {
    metrics_->stream_opened();
  }
  ~CountedStream() override { metrics_->stream_closed(); }

 private:
  std::shared_ptr<AgentMetrics> metrics_;
};

}  // namespace clusterconnect::agent
