#include "ws_pump.hpp"

#include <array>
#include <vector>

#include <boost/asio/dispatch.hpp>

namespace clusterconnect::relay {

namespace {

namespace beast = boost::beast;
namespace websocket = beast::websocket;

// One read at a time per direction: a TLS record and its framing fit.
constexpr std::size_t chunk = 17 * 1024;

class Pump final : public WsPump, public std::enable_shared_from_this<Pump> {
 public:
  Pump(tunnel::WsStream sender, tunnel::WsStream listener, WsRendezvousCounters& counters, std::shared_ptr<void> lease)
      : ends_{End{std::move(sender)}, End{std::move(listener)}}, counters_(counters), lease_(std::move(lease)) {
    for (auto& e : ends_) {
      tunnel::configure_established(e.ws);
      // Messages are streamed through, never held whole; a bound still.
      e.ws.read_message_max(std::uint64_t{1} << 32);
      e.buffer.resize(chunk);
    }
    counters_.active.fetch_add(1);
  }
  ~Pump() override { counters_.active.fetch_sub(1); }

  void start() {
    for (int i : {0, 1})
      asio::dispatch(ends_[i].ws.get_executor(), [self = shared_from_this(), i] { self->read(i); });
  }

  void close(const std::string& reason) noexcept override {
    try {
      if (closing_.exchange(true)) return;
      for (int i : {0, 1}) {
        asio::dispatch(ends_[i].ws.get_executor(), [self = shared_from_this(), i, reason] {
          self->close_end(i, websocket::close_reason(websocket::close_code::going_away, reason));
        });
      }
    } catch (...) {
    }
  }

 private:
  struct End {
    explicit End(tunnel::WsStream w) : ws(std::move(w)) {}
    tunnel::WsStream ws;
    std::vector<std::uint8_t> buffer;  // what was read from this end
    bool writing_message = false;      // a message to this end is unfinished
  };

  // On ends_[from]'s executor.
  void read(int from) {
    auto& src = ends_[from];
    src.ws.async_read_some(asio::buffer(src.buffer), [self = shared_from_this(), from](error_code ec, std::size_t n) {
      self->on_read(from, ec, n);
    });
  }

  void on_read(int from, error_code ec, std::size_t n) {
    auto& src = ends_[from];
    if (ec) return end_from(from, ec);
    const bool fin = src.ws.is_message_done();
    const bool binary = src.ws.got_binary();
    (from == 0 ? counters_.bytes_sender_to_listener : counters_.bytes_listener_to_sender).fetch_add(n);
    const int to = 1 - from;
    asio::dispatch(ends_[to].ws.get_executor(), [self = shared_from_this(), from, to, n, fin, binary] {
      self->write(from, to, n, fin, binary);
    });
  }

  // On ends_[to]'s executor.
  void write(int from, int to, std::size_t n, bool fin, bool binary) {
    auto& dst = ends_[to];
    if (!dst.writing_message) dst.ws.binary(binary);
    dst.writing_message = !fin;
    dst.ws.async_write_some(fin, asio::buffer(ends_[from].buffer.data(), n),
                            [self = shared_from_this(), from, to](error_code ec, std::size_t) {
                              if (ec) return self->end_from(to, ec);
                              asio::dispatch(self->ends_[from].ws.get_executor(), [self, from] { self->read(from); });
                            });
  }

  // ends_[which] failed or closed (on its executor): the other end follows,
  // with the close frame's code and reason when there was one.
  void end_from(int which, error_code ec) {
    if (closing_.exchange(true)) return;
    const int other = 1 - which;
    websocket::close_reason why(websocket::close_code::going_away, "the other end of the rendezvous went away");
    if (ec == websocket::error::closed) why = ends_[which].ws.reason();
    error_code ignored;
    if (ec != websocket::error::closed) beast::get_lowest_layer(ends_[which].ws).socket().close(ignored);
    asio::dispatch(ends_[other].ws.get_executor(), [self = shared_from_this(), other, why] { self->close_end(other, why); });
  }

  void close_end(int i, const websocket::close_reason& why) {
    auto& e = ends_[i];
    if (!e.ws.is_open()) {
      error_code ignored;
      beast::get_lowest_layer(e.ws).socket().close(ignored);
      return;
    }
    e.ws.async_close(why, [self = shared_from_this(), i](error_code) {
      error_code ignored;
      beast::get_lowest_layer(self->ends_[i].ws).socket().close(ignored);
    });
  }

  std::array<End, 2> ends_;  // [0] the sender, [1] the listener
  WsRendezvousCounters& counters_;
  std::shared_ptr<void> lease_;
  std::atomic<bool> closing_{false};
};

}  // namespace

std::shared_ptr<WsPump> start_ws_pump(tunnel::WsStream sender, tunnel::WsStream listener, WsRendezvousCounters& counters,
                                      std::shared_ptr<void> lease) {
  auto pump = std::make_shared<Pump>(std::move(sender), std::move(listener), counters, std::move(lease));
  pump->start();
  return pump;
}

}  // namespace clusterconnect::relay
