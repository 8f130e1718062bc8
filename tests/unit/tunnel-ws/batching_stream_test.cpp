// The layer under TLS that gathers a message's records (BatchingStream):
// how many writes reach the layer below, in what order, and what a failed
// write does to the writes after it. The layer below is a recorder.

#include <catch2/catch.hpp>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/write.hpp>

#include "clusterconnect/batching_stream.hpp"

namespace asio = boost::asio;
using boost::system::error_code;
using clusterconnect::BatchingStream;

namespace {

// Takes every write whole and remembers its size and bytes.
struct Recorder {
  using executor_type = asio::io_context::executor_type;
  using lowest_layer_type = Recorder;

  struct Log {
    std::vector<std::size_t> writes;
    std::string bytes;
    error_code fail_with;
  };

  asio::io_context* io;
  std::shared_ptr<Log> log = std::make_shared<Log>();

  explicit Recorder(asio::io_context& c) : io(&c) {}
  executor_type get_executor() noexcept { return io->get_executor(); }
  lowest_layer_type& lowest_layer() noexcept { return *this; }
  const lowest_layer_type& lowest_layer() const noexcept { return *this; }

  template <typename MutableBuffers, typename Handler>
  void async_read_some(const MutableBuffers&, Handler&& h) {
    asio::post(*io, [h = std::forward<Handler>(h)]() mutable { h(asio::error::eof, 0); });
  }

  template <typename ConstBuffers, typename Handler>
  void async_write_some(const ConstBuffers& buffers, Handler&& h) {
    std::size_t n = 0;
    for (auto it = asio::buffer_sequence_begin(buffers); it != asio::buffer_sequence_end(buffers); ++it) {
      const asio::const_buffer b(*it);
      if (!log->fail_with) log->bytes.append(static_cast<const char*>(b.data()), b.size());
      n += b.size();
    }
    if (!log->fail_with) log->writes.push_back(n);
    asio::post(*io, [h = std::forward<Handler>(h), ec = log->fail_with, n]() mutable { h(ec, ec ? 0 : n); });
  }
};

using Stream = BatchingStream<Recorder>;

std::string record(std::size_t n, char c) { return std::string(n, c); }

// Writes the records one after another, as a TLS layer does, then calls done.
void write_records(Stream& s, std::shared_ptr<std::vector<std::string>> records, std::size_t i,
                   std::function<void(error_code)> done) {
  if (i == records->size()) return done({});
  asio::async_write(s, asio::buffer((*records)[i]), [&s, records, i, done](error_code ec, std::size_t) {
    if (ec) return done(ec);
    write_records(s, records, i + 1, done);
  });
}

}  // namespace

TEST_CASE("outside a batch every record is written as it comes", "[batching-stream]") {
  asio::io_context io;
  Stream s(io);
  auto log = s.next_layer().log;
  auto records = std::make_shared<std::vector<std::string>>(std::vector<std::string>{record(100, 'a'), record(200, 'b'), record(300, 'c')});
  error_code result = asio::error::would_block;
  write_records(s, records, 0, [&](error_code ec) { result = ec; });
  io.run();
  CHECK_FALSE(result);
  CHECK(log->writes == std::vector<std::size_t>{100, 200, 300});
  CHECK(log->bytes == (*records)[0] + (*records)[1] + (*records)[2]);
  CHECK(s.gathered() == 0);
}

TEST_CASE("a batch leaves in runs of flush_at bytes and the flush writes the rest", "[batching-stream]") {
  asio::io_context io;
  Stream s(io);
  auto log = s.next_layer().log;
  auto records = std::make_shared<std::vector<std::string>>();
  std::string expected;
  for (int i = 0; i < 70; ++i) {  // 70 records of 16 KiB: four full runs and six records
    records->push_back(record(16 * 1024, static_cast<char>('a' + i % 26)));
    expected += records->back();
  }
  s.begin_batch();
  error_code written = asio::error::would_block, flushed = asio::error::would_block;
  std::size_t gathered_before_flush = 0;
  write_records(s, records, 0, [&](error_code ec) {
    written = ec;
    gathered_before_flush = s.gathered();
    s.async_flush([&](error_code fe) { flushed = fe; });
  });
  io.run();
  CHECK_FALSE(written);
  CHECK_FALSE(flushed);
  CHECK(gathered_before_flush == 6 * 16 * 1024);
  CHECK(log->writes == std::vector<std::size_t>{Stream::flush_at, Stream::flush_at, Stream::flush_at, Stream::flush_at,
                                                6 * 16 * 1024});
  CHECK(log->bytes == expected);
  CHECK(s.gathered() == 0);
}

TEST_CASE("a flush with nothing gathered completes without a write", "[batching-stream]") {
  asio::io_context io;
  Stream s(io);
  s.begin_batch();
  error_code flushed = asio::error::would_block;
  s.async_flush([&](error_code ec) { flushed = ec; });
  io.run();
  CHECK_FALSE(flushed);
  CHECK(s.next_layer().log->writes.empty());
}

TEST_CASE("a record written during a flush leaves after the flushed ones", "[batching-stream]") {
  asio::io_context io;
  Stream s(io);
  auto log = s.next_layer().log;
  auto records = std::make_shared<std::vector<std::string>>(std::vector<std::string>{record(1000, 'a'), record(2000, 'b')});
  const std::string late = record(50, 'z');  // as a TLS read answering the peer would write
  s.begin_batch();
  error_code flushed = asio::error::would_block, late_written = asio::error::would_block;
  std::size_t late_n = 0;
  write_records(s, records, 0, [&](error_code ec) {
    REQUIRE_FALSE(ec);
    s.async_flush([&](error_code fe) { flushed = fe; });
    // The flush's write is in flight now; this record must not overtake it.
    s.async_write_some(asio::buffer(late), [&](error_code we, std::size_t n) {
      late_written = we;
      late_n = n;
    });
  });
  io.run();
  CHECK_FALSE(flushed);
  CHECK_FALSE(late_written);
  CHECK(late_n == late.size());
  CHECK(log->writes == std::vector<std::size_t>{3000, 50});
  CHECK(log->bytes == (*records)[0] + (*records)[1] + late);
}

TEST_CASE("a failed write fails the flush and every later write", "[batching-stream]") {
  asio::io_context io;
  Stream s(io);
  auto log = s.next_layer().log;
  log->fail_with = asio::error::broken_pipe;
  auto records = std::make_shared<std::vector<std::string>>(std::vector<std::string>{record(10, 'a')});
  s.begin_batch();
  error_code written = asio::error::would_block, flushed = asio::error::would_block, after = {};
  std::size_t after_n = 1;
  write_records(s, records, 0, [&](error_code ec) {
    written = ec;  // gathered, not yet written: no error yet
    s.async_flush([&](error_code fe) {
      flushed = fe;
      s.async_write_some(asio::buffer(records->front()), [&](error_code we, std::size_t n) {
        after = we;
        after_n = n;
      });
    });
  });
  io.run();
  CHECK_FALSE(written);
  CHECK(flushed == asio::error::broken_pipe);
  CHECK(after == asio::error::broken_pipe);
  CHECK(after_n == 0);
}
