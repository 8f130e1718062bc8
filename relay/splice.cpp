#include <atomic>
#include <vector>

#include <spdlog/spdlog.h>

#include "tunnel_switch.hpp"

namespace clusterconnect::relay {

namespace {

// One pump per direction. It takes the bytes the source session already
// holds (one received frame, or up to this many gathered) and holds them
// only until the far side accepted them: an idle stream costs no buffer.
// Credit goes back to the source as the bytes are taken and a write
// completes only when the far side's credit allows, so a slow reader stops
// its own pump and nothing else.
constexpr std::size_t pump_chunk_max = tunnel::max_data_payload;

struct SpliceState {
  SpliceState(tunnel::TunnelStreamPtr c, tunnel::TunnelStreamPtr a, RelayMetrics& m)
      : client(std::move(c)), agent(std::move(a)), metrics(m) {
    metrics.stream_started();
  }
  ~SpliceState() { metrics.stream_finished(); }

  void abort(const std::string& reason) {
    if (aborted.exchange(true)) return;
    client->reset(reason);
    agent->reset(reason);
  }

  tunnel::TunnelStreamPtr client;
  tunnel::TunnelStreamPtr agent;
  RelayMetrics& metrics;
  std::atomic<bool> aborted{false};
};

class Pump : public std::enable_shared_from_this<Pump> {
 public:
  Pump(std::shared_ptr<SpliceState> state, bool to_agent)
      : state_(std::move(state)),
        from_(to_agent ? state_->client : state_->agent),
        to_(to_agent ? state_->agent : state_->client),
        counter_(to_agent ? state_->metrics.bytes_client_to_agent : state_->metrics.bytes_agent_to_client),
        what_(to_agent ? "client" : "agent") {}

  void start() { do_read(); }

 private:
  void do_read() {
    from_->async_read_chunk(pump_chunk_max, [self = shared_from_this()](error_code ec, std::vector<std::uint8_t> chunk) {
      self->on_read(ec, std::move(chunk));
    });
  }

  void on_read(error_code ec, std::vector<std::uint8_t> chunk) {
    if (ec == asio::error::eof) {
      to_->async_shutdown_send([self = shared_from_this()](error_code e) {
        if (e && e != asio::error::operation_aborted) self->state_->abort("relay could not forward the half-close");
      });
      return;
    }
    if (ec) {
      state_->abort(ec == asio::error::connection_reset ? std::string(what_) + " side reset the stream"
                                                        : std::string(what_) + " side failed: " + ec.message());
      return;
    }
    chunk_ = std::move(chunk);
    offset_ = 0;
    do_write();
  }

  void do_write() {
    asio::const_buffer b(chunk_.data() + offset_, chunk_.size() - offset_);
    to_->async_write_some(std::span<const asio::const_buffer>(&b, 1),
                          [self = shared_from_this()](error_code ec, std::size_t n) { self->on_write(ec, n); });
  }

  void on_write(error_code ec, std::size_t n) {
    if (ec) {
      state_->abort(ec == asio::error::connection_reset ? std::string(what_ == std::string("client") ? "agent" : "client") +
                                                              " side reset the stream"
                                                        : "relay could not forward: " + ec.message());
      return;
    }
    counter_.fetch_add(n, std::memory_order_relaxed);
    offset_ += n;
    if (offset_ < chunk_.size()) return do_write();
    chunk_ = {};  // released, not kept for the next read
    do_read();
  }

  std::shared_ptr<SpliceState> state_;
  tunnel::TunnelStreamPtr from_;
  tunnel::TunnelStreamPtr to_;
  std::atomic<std::uint64_t>& counter_;
  const char* what_;
  std::vector<std::uint8_t> chunk_;
  std::size_t offset_ = 0;
};

}  // namespace

void splice(tunnel::TunnelStreamPtr client, tunnel::TunnelStreamPtr agent, RelayMetrics& metrics,
            std::shared_ptr<spdlog::logger> logger) {
  logger->debug("splicing {} <-> {}", client->describe(), agent->describe());
  auto state = std::make_shared<SpliceState>(std::move(client), std::move(agent), metrics);
  std::make_shared<Pump>(state, true)->start();
  std::make_shared<Pump>(state, false)->start();
}

}  // namespace clusterconnect::relay
