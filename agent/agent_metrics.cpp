#include "agent_metrics.hpp"

#include <sstream>

namespace clusterconnect::agent {

void AgentMetrics::request_done(unsigned code, std::chrono::microseconds duration, bool upgraded) {
  double seconds = static_cast<double>(duration.count()) / 1e6;
  std::lock_guard lock(mutex_);
  ++requests_by_code_[code];
  if (upgraded) {
    ++upgrades_;
    return;  // an upgraded stream's lifetime is not a request latency
  }
  std::size_t i = 0;
  while (i < bounds_.size() && seconds > bounds_[i]) ++i;
  ++buckets_[i];
  latency_sum_ += seconds;
  ++latency_count_;
}

void AgentMetrics::auth_failure(const std::string& reason) {
  std::lock_guard lock(mutex_);
  ++auth_failures_[reason];
}

std::string AgentMetrics::render(unsigned tunnels_up, const UpstreamCounts& upstream) const {
  std::ostringstream out;
  std::lock_guard lock(mutex_);
  out << "# HELP clusterconnect_agent_requests_total Requests forwarded or answered, by HTTP status code.\n"
         "# TYPE clusterconnect_agent_requests_total counter\n";
  for (const auto& [code, n] : requests_by_code_)
    out << "clusterconnect_agent_requests_total{code=\"" << code << "\"} " << n << "\n";
  out << "# HELP clusterconnect_agent_auth_failures_total Rejected credentials, by reason.\n"
         "# TYPE clusterconnect_agent_auth_failures_total counter\n";
  for (const auto& [reason, n] : auth_failures_)
    out << "clusterconnect_agent_auth_failures_total{reason=\"" << reason << "\"} " << n << "\n";
  out << "# HELP clusterconnect_agent_streams_active Streams from the relay being served.\n"
         "# TYPE clusterconnect_agent_streams_active gauge\n"
      << "clusterconnect_agent_streams_active " << streams_active_.load() << "\n"
      << "# HELP clusterconnect_agent_audit_dropped_total Audit records dropped because the audit writer fell behind.\n"
         "# TYPE clusterconnect_agent_audit_dropped_total counter\n"
      << "clusterconnect_agent_audit_dropped_total " << audit_dropped_.load() << "\n"
      << "# HELP clusterconnect_agent_upgrades_total Upgraded connections (exec, attach, port-forward).\n"
         "# TYPE clusterconnect_agent_upgrades_total counter\n"
      << "clusterconnect_agent_upgrades_total " << upgrades_ << "\n"
      << "# HELP clusterconnect_agent_tunnels_up Tunnels to the relay that are connected.\n"
         "# TYPE clusterconnect_agent_tunnels_up gauge\n"
      << "clusterconnect_agent_tunnels_up " << tunnels_up << "\n";
  if (upstream.pooled)
    out << "# HELP clusterconnect_agent_upstream_connections_opened_total Connections opened to the API server.\n"
           "# TYPE clusterconnect_agent_upstream_connections_opened_total counter\n"
        << "clusterconnect_agent_upstream_connections_opened_total " << upstream.opened << "\n"
        << "# HELP clusterconnect_agent_upstream_connections_reused_total Requests sent on an idle API server "
           "connection taken from the pool.\n"
           "# TYPE clusterconnect_agent_upstream_connections_reused_total counter\n"
        << "clusterconnect_agent_upstream_connections_reused_total " << upstream.reused << "\n"
        << "# HELP clusterconnect_agent_upstream_connections_idle Idle API server connections in the pool.\n"
           "# TYPE clusterconnect_agent_upstream_connections_idle gauge\n"
        << "clusterconnect_agent_upstream_connections_idle " << upstream.idle << "\n";
  if (upstream.http2)
    out << "# HELP clusterconnect_agent_upstream_h2_connections_opened_total HTTP/2 connections opened to the API server.\n"
           "# TYPE clusterconnect_agent_upstream_h2_connections_opened_total counter\n"
        << "clusterconnect_agent_upstream_h2_connections_opened_total " << upstream.h2_connections_opened << "\n"
        << "# HELP clusterconnect_agent_upstream_h2_connections HTTP/2 connections to the API server open now.\n"
           "# TYPE clusterconnect_agent_upstream_h2_connections gauge\n"
        << "clusterconnect_agent_upstream_h2_connections " << upstream.h2_connections << "\n"
        << "# HELP clusterconnect_agent_upstream_h2_streams_total Requests sent to the API server as HTTP/2 streams.\n"
           "# TYPE clusterconnect_agent_upstream_h2_streams_total counter\n"
        << "clusterconnect_agent_upstream_h2_streams_total " << upstream.h2_streams_opened << "\n"
        << "# HELP clusterconnect_agent_upstream_h2_streams_active HTTP/2 streams to the API server open now.\n"
           "# TYPE clusterconnect_agent_upstream_h2_streams_active gauge\n"
        << "clusterconnect_agent_upstream_h2_streams_active " << upstream.h2_streams_active << "\n"
        << "# HELP clusterconnect_agent_upstream_h2_streams_reset_total HTTP/2 streams reset by the API server.\n"
           "# TYPE clusterconnect_agent_upstream_h2_streams_reset_total counter\n"
        << "clusterconnect_agent_upstream_h2_streams_reset_total " << upstream.h2_streams_reset << "\n"
        << "# HELP clusterconnect_agent_upstream_h2_streams_retried_total Requests sent again after a GOAWAY refused "
           "them or their connection was lost.\n"
           "# TYPE clusterconnect_agent_upstream_h2_streams_retried_total counter\n"
        << "clusterconnect_agent_upstream_h2_streams_retried_total " << upstream.h2_streams_retried << "\n"
        << "# HELP clusterconnect_agent_upstream_h2_ping_timeouts_total HTTP/2 connections to the API server closed "
           "because a PING got no answer.\n"
           "# TYPE clusterconnect_agent_upstream_h2_ping_timeouts_total counter\n"
        << "clusterconnect_agent_upstream_h2_ping_timeouts_total " << upstream.h2_ping_timeouts << "\n"
        << "# HELP clusterconnect_agent_upstream_h2_connects_retried_total HTTP/2 connections to the API server that "
           "failed to open, tried again for the requests waiting on them.\n"
           "# TYPE clusterconnect_agent_upstream_h2_connects_retried_total counter\n"
        << "clusterconnect_agent_upstream_h2_connects_retried_total " << upstream.h2_connects_retried << "\n";
  out
      << "# HELP clusterconnect_agent_request_duration_seconds Time to the end of the response.\n"
         "# TYPE clusterconnect_agent_request_duration_seconds histogram\n";
  std::uint64_t cumulative = 0;
  for (std::size_t i = 0; i < bounds_.size(); ++i) {
    cumulative += buckets_[i];
    out << "clusterconnect_agent_request_duration_seconds_bucket{le=\"" << bounds_[i] << "\"} " << cumulative << "\n";
  }
  cumulative += buckets_.back();
  out << "clusterconnect_agent_request_duration_seconds_bucket{le=\"+Inf\"} " << cumulative << "\n"
      << "clusterconnect_agent_request_duration_seconds_sum " << latency_sum_ << "\n"
      << "clusterconnect_agent_request_duration_seconds_count " << latency_count_ << "\n";
  return out.str();
}

}  // namespace clusterconnect::agent
