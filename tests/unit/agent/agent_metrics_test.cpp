// The agent's metrics text: the upstream pool's counters appear with a pool.

#include <catch2/catch.hpp>

#include "agent_metrics.hpp"

using namespace clusterconnect::agent;

TEST_CASE("metrics: the upstream pool's connections opened reused and idle", "[agent][metrics]") {
  AgentMetrics metrics;
  const std::string pooled = metrics.render(1, UpstreamCounts{true, 3, 17, 2});
  CHECK_THAT(pooled, Catch::Contains("\nclusterconnect_agent_upstream_connections_opened_total 3\n"));
  CHECK_THAT(pooled, Catch::Contains("\nclusterconnect_agent_upstream_connections_reused_total 17\n"));
  CHECK_THAT(pooled, Catch::Contains("\nclusterconnect_agent_upstream_connections_idle 2\n"));
  CHECK_THAT(pooled, Catch::Contains("# TYPE clusterconnect_agent_upstream_connections_idle gauge\n"));
  CHECK_THAT(pooled, Catch::Contains("\nclusterconnect_agent_tunnels_up 1\n"));
  // Without a pool (--upstream-idle-max 0) there is nothing to report.
  const std::string unpooled = metrics.render(1);
  CHECK_THAT(unpooled, !Catch::Contains("upstream_connections"));
  CHECK_THAT(unpooled, Catch::Contains("clusterconnect_agent_request_duration_seconds_count 0\n"));
}

TEST_CASE("metrics: HTTP/2 connections and streams to the API server", "[agent][metrics]") {
  AgentMetrics metrics;
  UpstreamCounts counts{true, 3, 17, 2};
  counts.http2 = true;
  counts.h2_connections_opened = 1;
  counts.h2_connections = 1;
  counts.h2_streams_opened = 40;
  counts.h2_streams_active = 5;
  counts.h2_streams_reset = 2;
  counts.h2_streams_retried = 3;
  counts.h2_ping_timeouts = 4;
  counts.h2_connects_retried = 6;
  const std::string text = metrics.render(1, counts);
  CHECK_THAT(text, Catch::Contains("\nclusterconnect_agent_upstream_h2_connections_opened_total 1\n"));
  CHECK_THAT(text, Catch::Contains("\nclusterconnect_agent_upstream_h2_streams_total 40\n"));
  CHECK_THAT(text, Catch::Contains("\nclusterconnect_agent_upstream_h2_streams_active 5\n"));
  CHECK_THAT(text, Catch::Contains("\nclusterconnect_agent_upstream_h2_streams_reset_total 2\n"));
  CHECK_THAT(text, Catch::Contains("\nclusterconnect_agent_upstream_h2_streams_retried_total 3\n"));
  CHECK_THAT(text, Catch::Contains("\nclusterconnect_agent_upstream_h2_ping_timeouts_total 4\n"));
  CHECK_THAT(text, Catch::Contains("\nclusterconnect_agent_upstream_h2_connects_retried_total 6\n"));
  // --upstream-http2 off: none of them.
  CHECK_THAT(metrics.render(1, UpstreamCounts{true, 3, 17, 2}), !Catch::Contains("upstream_h2_"));
}
