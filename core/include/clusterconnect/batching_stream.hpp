#pragma once
// A layer under TLS that gathers the records of one large write into few
// writes to the layer below. asio::ssl::stream hands its next layer one TLS
// record (at most 16 KiB of plaintext) per write and waits for it, so a 1 MiB
// message leaves as 64 socket writes, and every hop that forwards the bytes
// (the relay's splice above all) wakes once per record. Between
// begin_batch() and async_flush() this layer takes the records in at once
// and writes them in runs of up to `flush_at` bytes; outside a batch it still
// writes each record as it comes (handshakes, alerts). At most one write to
// the layer below is in flight, whoever asked for it, so records never
// interleave. Header-only; no Beast.
//
// One owner, one executor: every operation is started and completed on the
// executor of the layer below (a strand in the transport).

#include <cstdint>
#include <cstring>
#include <memory>
#include <type_traits>
#include <utility>
#include <vector>

#include <boost/asio/async_result.hpp>
#include <boost/asio/buffer.hpp>
#include <boost/asio/post.hpp>
#include <boost/system/error_code.hpp>

namespace clusterconnect {

template <typename Next>
class BatchingStream {
 public:
  using executor_type = typename Next::executor_type;
  using lowest_layer_type = typename Next::lowest_layer_type;
  using next_layer_type = Next;
  using error_code = boost::system::error_code;

  // Past this many gathered bytes a batch is written out before the next
  // record is taken (four of loopback's largest segments).
  static constexpr std::size_t flush_at = 256 * 1024;

  template <typename Arg>
    requires(!std::is_same_v<std::decay_t<Arg>, BatchingStream>)
  explicit BatchingStream(Arg&& arg) : next_(std::forward<Arg>(arg)), state_(std::make_shared<State>()) {}
  BatchingStream(BatchingStream&&) = default;
  BatchingStream& operator=(BatchingStream&&) = default;

  executor_type get_executor() noexcept { return next_.get_executor(); }
  Next& next_layer() noexcept { return next_; }
  lowest_layer_type& lowest_layer() noexcept { return next_.lowest_layer(); }
  const lowest_layer_type& lowest_layer() const noexcept { return next_.lowest_layer(); }

  template <typename MutableBuffers, typename Handler>
  auto async_read_some(const MutableBuffers& buffers, Handler&& handler) {
    return next_.async_read_some(buffers, std::forward<Handler>(handler));
  }

  template <typename ConstBuffers, typename Handler>
  auto async_write_some(const ConstBuffers& buffers, Handler&& handler) {
    return boost::asio::async_initiate<Handler, void(error_code, std::size_t)>(
        [this](auto h, const ConstBuffers& b) { start_write(Waiter(std::move(h)), b); }, handler, buffers);
  }

  // Records written from now on are gathered, until async_flush.
  void begin_batch() noexcept { state_->batching = true; }

  // Ends the batch: completes once everything gathered is written below.
  template <typename Handler>
  auto async_flush(Handler&& handler) {
    return boost::asio::async_initiate<Handler, void(error_code)>(
        [this](auto h) {
          start_flush(Waiter([h = std::move(h)](error_code ec, std::size_t) mutable { h(ec); }));
        },
        handler);
  }

  // Bytes taken in and not yet written below (for tests).
  std::size_t gathered() const noexcept { return state_->pending.size() + state_->in_flight.size(); }

 private:
  // A completion handler of either operation, type-erased and move-only.
  class Waiter {
   public:
    Waiter() = default;
    template <typename H>
    explicit Waiter(H h) : call_(std::make_unique<Impl<H>>(std::move(h))) {}
    explicit operator bool() const noexcept { return call_ != nullptr; }
    void operator()(error_code ec, std::size_t n) {
      auto c = std::move(call_);
      c->call(ec, n);
    }

   private:
    struct Base {
      virtual ~Base() = default;
      virtual void call(error_code, std::size_t) = 0;
    };
    template <typename H>
    struct Impl final : Base {
      explicit Impl(H handler) : h(std::move(handler)) {}
      void call(error_code ec, std::size_t n) override { h(ec, n); }
      H h;
    };
    std::unique_ptr<Base> call_;
  };

  struct State {
    std::vector<std::uint8_t> pending;    // taken in, not yet handed below
    std::vector<std::uint8_t> in_flight;  // being written below
    boost::asio::const_buffer direct;      // or this, the caller's own record
    bool batching = false;
    bool writing = false;
    error_code failed;         // the first write error; every later write gets it
    Waiter write_waiter;       // a record held back until the run it closed is written
    std::size_t write_waiter_bytes = 0;
    Waiter flush_waiter;
  };

  void complete_later(Waiter w, error_code ec, std::size_t n) {
    boost::asio::post(next_.get_executor(), [w = std::move(w), ec, n]() mutable { w(ec, n); });
  }

  template <typename ConstBuffers>
  void start_write(Waiter w, const ConstBuffers& buffers) {
    auto& s = *state_;
    if (s.failed) return complete_later(std::move(w), s.failed, 0);
    if (!s.batching && !s.writing && s.pending.empty() && single_buffer(buffers)) {
      // A record outside a batch with nothing queued (a small response, a
      // handshake message) goes straight from the caller's buffer, which
      // stays valid until its handler runs: no copy, no extra hop.
      const boost::asio::const_buffer b(*boost::asio::buffer_sequence_begin(buffers));
      s.write_waiter = std::move(w);
      s.write_waiter_bytes = b.size();
      s.writing = true;
      s.direct = b;
      return write_direct(0);
    }
    std::size_t n = 0;
    for (auto it = boost::asio::buffer_sequence_begin(buffers); it != boost::asio::buffer_sequence_end(buffers); ++it) {
      const boost::asio::const_buffer b(*it);
      const auto* p = static_cast<const std::uint8_t*>(b.data());
      s.pending.insert(s.pending.end(), p, p + b.size());
      n += b.size();
    }
    const bool full = s.pending.size() >= flush_at;
    if (s.batching && !full) return complete_later(std::move(w), {}, n);
    // Outside a batch the record waits for its own write; in one, a full run
    // is written before the next record is taken.
    s.write_waiter = std::move(w);
    s.write_waiter_bytes = n;
    if (!s.writing) write_pending();
  }

  template <typename ConstBuffers>
  static bool single_buffer(const ConstBuffers& buffers) {
    auto it = boost::asio::buffer_sequence_begin(buffers);
    const auto end = boost::asio::buffer_sequence_end(buffers);
    return it != end && ++it == end;
  }

  void write_direct(std::size_t done) {
    auto& s = *state_;
    next_.async_write_some(boost::asio::buffer(s.direct + done), [this, keep = state_, done](error_code ec, std::size_t n) {
      if (!ec && done + n < keep->direct.size()) return write_direct(done + n);
      keep->direct = {};
      after_write(ec);
    });
  }

  void start_flush(Waiter w) {
    auto& s = *state_;
    s.batching = false;
    if (s.failed) return complete_later(std::move(w), s.failed, 0);
    if (!s.writing && s.pending.empty()) return complete_later(std::move(w), {}, 0);
    s.flush_waiter = std::move(w);
    if (!s.writing) write_pending();
  }

  void write_pending() {
    auto& s = *state_;
    s.writing = true;
    s.in_flight.swap(s.pending);
    write_in_flight(0);
  }

  // The whole run in as few writes as the layer below takes (asio::async_write
  // would cut it into 64 KiB writes).
  void write_in_flight(std::size_t done) {
    auto& s = *state_;
    next_.async_write_some(boost::asio::buffer(s.in_flight.data() + done, s.in_flight.size() - done),
                           [this, keep = state_, done](error_code ec, std::size_t n) {
                             if (!ec && done + n < keep->in_flight.size()) return write_in_flight(done + n);
                             after_write(ec);
                           });
  }

  void after_write(error_code ec) {
    auto& s = *state_;
    s.writing = false;
    s.in_flight.clear();
    if (ec && !s.failed) s.failed = ec;
    if (!s.failed && !s.pending.empty() && (!s.batching || s.pending.size() >= flush_at)) return write_pending();
    if (s.write_waiter) {
      auto w = std::move(s.write_waiter);
      w(s.failed, s.failed ? 0 : s.write_waiter_bytes);
    }
    if (s.flush_waiter && (s.failed || (!s.writing && s.pending.empty()))) {
      auto w = std::move(s.flush_waiter);
      w(s.failed, 0);
    }
  }

  Next next_;
  std::shared_ptr<State> state_;  // handlers keep it alive past a close
};

}  // namespace clusterconnect
