// TLS on a socket without Asio's engine. Why not asio::ssl::stream: its
// engine runs OpenSSL over a BIO pair, so every byte is copied twice more
// (socket -> engine buffer -> BIO pair -> OpenSSL, and back), and each
// connection keeps ~68 KiB of buffers even when idle. Here a BIO of our own
// stands between OpenSSL and the socket:
//   read:  recv() straight into OpenSSL's record buffer. With read-ahead and
//          a 64 KiB buffer, one recv takes several records; with
//          SSL_MODE_RELEASE_BUFFERS the buffer is freed when it runs empty,
//          so a connection waiting for its next request holds none.
//   write: records are appended to one output buffer that leaves in one
//          send() (more only when the kernel is full), so the records of one
//          message wake the next hop once, as BatchingStream did.
// Readiness comes from the socket's async_wait on its own executor; the BIO
// never blocks, so OpenSSL only ever asks to wait for reading (writes always
// "succeed" into the output buffer, which is then drained).

#include "clusterconnect/tls_socket.hpp"

#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <optional>
#include <stdexcept>
#include <vector>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include <boost/asio/post.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/ssl/error.hpp>

namespace clusterconnect::tls {
namespace {

using tcp = asio::ip::tcp;

// OpenSSL's record buffer while data flows: up to four full records per recv.
constexpr std::size_t kReadBufferLen = 64 * 1024;
// TLS's largest plaintext record: a full one hints that more is on the way.
constexpr std::size_t kFullRecord = 16 * 1024;
// Output buffer capacity kept for reuse between writes; a larger one is freed once sent.
constexpr std::size_t kKeepOut = 16 * 1024;

BIO_METHOD* socket_bio_method();

// The TCP socket, able to wait for readiness with completions on a concrete
// executor: through the socket's any_io_executor, every async_wait takes
// work on a strand held by the type-erased executor (Boost 1.74 builds a new
// heap copy of it per prefer()), and then dispatches through another.
class WaitSocket : public tcp::socket {
 public:
  explicit WaitSocket(tcp::socket s) : tcp::socket(std::move(s)) {}

  template <typename Executor, typename Handler>
  void async_wait_on(const Executor& ex, wait_type w, Handler handler) {
    impl_.get_service().async_wait(impl_.get_implementation(), w, handler, ex);
  }

  // Registers the descriptor with the reactor anew, for reading only. Asio
  // keeps a connected socket registered for writability (its connect waited
  // for it), and re-arms every registered event on each readiness wait: each
  // wait for reading then returned at once, woken by writability. A write
  // that has to wait adds writability again.
  void register_for_reading(error_code& ec) {
    const auto protocol = impl_.get_implementation().protocol_;
    const auto fd = release(ec);
    if (!ec) assign(protocol, fd, ec);
  }
};

// Output buffers between writes: a connection that is not writing holds
// none; the thread's last few are reused by the next writer instead.
class OutBuffers {
 public:
  using Buffer = std::vector<unsigned char>;
  Buffer take() {
    if (free_.empty()) return {};
    Buffer b = std::move(free_.back());
    free_.pop_back();
    return b;
  }
  void give(Buffer& b) noexcept {
    b.clear();
    if (b.capacity() != 0 && b.capacity() <= kKeepOut && free_.size() < kKeep) {
      try {
        free_.push_back(std::move(b));
      } catch (...) {
      }
    }
    Buffer().swap(b);
  }

 private:
  static constexpr std::size_t kKeep = 8;
  std::vector<Buffer> free_;
};

OutBuffers& out_buffers() {
  thread_local OutBuffers buffers;
  return buffers;
}

}  // namespace

struct TlsSocket::Core : std::enable_shared_from_this<Core> {
  Core(tcp::socket s, std::shared_ptr<asio::ssl::context> c) : socket(std::move(s)), context(std::move(c)) {
    if (!context) throw std::invalid_argument("TLS connection without a TLS context");
    if (const auto* held = held_executor<IoStrand>(socket.get_executor())) strand = *held;
    ssl = SSL_new(context->native_handle());
    BIO* bio = ssl ? BIO_new(socket_bio_method()) : nullptr;
    if (!bio) {
      if (ssl) SSL_free(ssl);
      throw std::bad_alloc();
    }
    SSL_set_mode(ssl, SSL_MODE_RELEASE_BUFFERS);
    SSL_set_read_ahead(ssl, 1);
    SSL_set_default_read_buffer_len(ssl, kReadBufferLen);
    BIO_set_data(bio, this);
    BIO_set_init(bio, 1);
    SSL_set_bio(ssl, bio, bio);
  }
  ~Core() { SSL_free(ssl); }
  Core(const Core&) = delete;
  Core& operator=(const Core&) = delete;

  WaitSocket socket;
  // The socket's executor when it is a strand of an io_context (the data
  // path's case): readiness waits complete on it directly.
  std::optional<IoStrand> strand;
  std::shared_ptr<asio::ssl::context> context;
  SSL* ssl = nullptr;
  int non_blocking_fd = -1;

  // Records waiting for the socket; `sent` of them are gone.
  std::vector<unsigned char> out;
  std::size_t sent = 0;
  bool write_waiting = false;  // an async_wait for writability is outstanding
  error_code write_failed;     // every later write gets it
  std::vector<UniqueFunction<void(error_code)>> on_drained;
  // The one write's completion and the plaintext bytes it took.
  UniqueFunction<void(error_code, std::size_t)> write_done;
  std::size_t write_total = 0;

  // What the BIO saw on its last recv.
  bool eof = false;
  int recv_errno = 0;
  // The last recv left the socket empty (it returned less than it asked
  // for, or nothing). A read then waits for readiness without asking the
  // socket first: the wait re-arms the descriptor, which reports data that
  // came meanwhile. Cleared by every readiness wake.
  bool drained = false;

  // The one reading operation (a read, or the handshake).
  asio::mutable_buffer read_buffer;
  UniqueFunction<void(error_code, std::size_t)> read_done;
  UniqueFunction<void(error_code)> handshake_done;
  bool shutdown_sent = false;
  // Set while an operation is being started: its completion must then wait
  // for the executor rather than run inside the caller's call.
  bool initiating = false;

  // --- helpers ---------------------------------------------------------

  template <typename F>
  void wait(tcp::socket::wait_type w, F f) {
    if (strand) return socket.async_wait_on(*strand, w, std::move(f));
    socket.async_wait(w, std::move(f));
  }

  template <typename F>
  void later(F f) {
    post_on(socket.get_executor(), std::move(f));
  }

  // Runs a completion now if we are in a handler of our own, else from the executor.
  template <typename F>
  void complete(F f) {
    if (initiating) return later(std::move(f));
    f();
  }

  bool ready_for_io(error_code& ec) {
    if (!socket.is_open()) {
      ec = asio::error::bad_descriptor;
      return false;
    }
    if (socket.native_handle() != non_blocking_fd) {
      socket.non_blocking(true, ec);
      if (ec) return false;
      non_blocking_fd = socket.native_handle();
    }
    return true;
  }

  // The error behind a failed SSL call whose SSL_get_error was `err`.
  error_code failure(int err) {
    if (err == SSL_ERROR_ZERO_RETURN) return asio::error::eof;
    if (recv_errno != 0) return error_code(recv_errno, boost::system::system_category());
    const unsigned long e = ERR_get_error();
    ERR_clear_error();
    // The TCP connection ended without the peer's close_notify.
    if (eof && (SSL_get_shutdown(ssl) & SSL_RECEIVED_SHUTDOWN) == 0) return asio::ssl::error::stream_truncated;
    if (e != 0) return error_code(static_cast<int>(e), asio::error::get_ssl_category());
    if (err == SSL_ERROR_SYSCALL) return asio::ssl::error::stream_truncated;
    return asio::error::invalid_argument;  // SSL_ERROR_WANT_WRITE and the like: the BIO never asks for them
  }

  void before_ssl_call() {
    ERR_clear_error();
    recv_errno = 0;
  }

  // --- output ----------------------------------------------------------

  void notify_drained(error_code ec) {
    auto waiters = std::move(on_drained);
    on_drained.clear();
    for (auto& w : waiters) complete([w = std::move(w), ec]() mutable { w(ec); });
    // The list's storage serves the next write (one waiter each, usually)
    // unless a waiter that ran meanwhile queued another.
    if (on_drained.empty()) {
      waiters.clear();
      on_drained.swap(waiters);
    }
  }

  // Sends what is buffered; runs the drain waiters once all of it is gone.
  void pump() {
    if (write_waiting) return;
    while (sent < out.size()) {
      const ssize_t r = ::send(socket.native_handle(), out.data() + sent, out.size() - sent, MSG_NOSIGNAL);
      if (r > 0) {
        sent += static_cast<std::size_t>(r);
        continue;
      }
      if (r < 0 && errno == EINTR) continue;
      if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        write_waiting = true;
        wait(tcp::socket::wait_write, [self = shared_from_this()](error_code ec) {
          self->write_waiting = false;
          if (ec) return self->fail_output(ec);
          self->pump();
        });
        return;
      }
      return fail_output(r < 0 ? error_code(errno, boost::system::system_category()) : asio::error::connection_reset);
    }
    sent = 0;
    out_buffers().give(out);
    notify_drained({});
  }

  void fail_output(error_code ec) {
    if (!write_failed) write_failed = ec;
    std::vector<unsigned char>().swap(out);
    sent = 0;
    notify_drained(write_failed);
  }

  // `then` runs (from the executor) once everything buffered so far is sent.
  void drain(UniqueFunction<void(error_code)> then) {
    if (write_failed) return complete([then = std::move(then), ec = write_failed]() mutable { then(ec); });
    on_drained.push_back(std::move(then));
    pump();
  }

  // Room in `out` for the records of a write of `plain` bytes in `pieces`
  // pieces, so that OpenSSL's records are appended without the buffer moving
  // to a larger one midway (for a 256 KiB write, five moves, each copying
  // again what the buffer held).
  void reserve_output(std::size_t plain, std::size_t pieces) {
    // Per record: header, content type and tag (TLS 1.3), or header,
    // explicit nonce and tag (TLS 1.2 with AES-GCM); 32 covers both.
    constexpr std::size_t kRecordOverhead = 32;
    const std::size_t need = out.size() + plain + (plain / kFullRecord + pieces + 1) * kRecordOverhead;
    if (need <= out.capacity()) return;
    // A pooled buffer only when it is large enough: taking one only to free
    // it in reserve() would empty the pool for the small writes after.
    if (out.capacity() == 0 && need <= kKeepOut) out = out_buffers().take();
    out.reserve(need);
  }

  // --- waiting for input -------------------------------------------------

  template <typename F>
  void when_readable(F next) {
    wait(tcp::socket::wait_read, [self = shared_from_this(), next = std::move(next)](error_code ec) mutable {
      self->drained = false;
      next(ec);
    });
  }

  void wait_to_read() {
    if (!out.empty()) pump();  // a KeyUpdate answer or the like
    when_readable([self = shared_from_this()](error_code e) {
      if (e) return self->finish_read(e, 0);
      self->read_step();
    });
  }

  // --- handshake -----------------------------------------------------------

  void handshake_step() {
    before_ssl_call();
    const int r = SSL_do_handshake(ssl);
    if (r == 1) {
      ERR_clear_error();
      return drain([self = shared_from_this()](error_code ec) { self->finish_handshake(ec); });
    }
    const int err = SSL_get_error(ssl, r);
    if (err == SSL_ERROR_WANT_READ) {
      if (!out.empty()) pump();  // our flight first: the answer depends on it
      if (write_failed) return finish_handshake(write_failed);
      return when_readable([self = shared_from_this()](error_code ec) {
        if (ec) return self->finish_handshake(ec);
        self->handshake_step();
      });
    }
    const error_code ec = failure(err);
    if (!out.empty()) pump();  // the alert that tells the peer why, if the socket takes it
    finish_handshake(ec);
  }

  void finish_handshake(error_code ec) {
    if (!ec && write_failed) ec = write_failed;
    auto h = std::move(handshake_done);
    handshake_done = nullptr;
    if (h) complete([h = std::move(h), ec]() mutable { h(ec); });
  }

  // --- read ----------------------------------------------------------------

  void read_step() {
    auto* p = static_cast<unsigned char*>(read_buffer.data());
    const std::size_t size = read_buffer.size();
    std::size_t total = 0;
    error_code ec;
    // Nothing buffered and nothing in the socket at its last recv: asking it
    // again would only return EAGAIN.
    if (drained && !SSL_has_pending(ssl)) return wait_to_read();
    // Whole records already received, then what the socket has, while the
    // buffer has room. After a short record the socket is not asked again:
    // that saves a syscall on every small response.
    for (;;) {
      before_ssl_call();
      std::size_t got = 0;
      const int r = SSL_read_ex(ssl, p + total, size - total, &got);
      if (r == 1) {
        total += got;
        if (total == size || (got < kFullRecord && !SSL_has_pending(ssl))) break;
        continue;
      }
      const int err = SSL_get_error(ssl, r);
      if (total > 0) {
        ERR_clear_error();  // whatever it was, it comes again on the next read
        break;
      }
      if (err == SSL_ERROR_WANT_READ) return wait_to_read();
      ec = failure(err);
      break;
    }
    if (!out.empty()) pump();
    finish_read(ec, total);
  }

  void finish_read(error_code ec, std::size_t n) {
    auto h = std::move(read_done);
    read_done = nullptr;
    read_buffer = {};
    if (h) complete([h = std::move(h), ec, n]() mutable { h(ec, n); });
  }
};

namespace {

int bio_write(BIO* bio, const char* data, int len) {
  auto* core = static_cast<TlsSocket::Core*>(BIO_get_data(bio));
  BIO_clear_retry_flags(bio);
  if (len <= 0) return 0;
  if (core->out.capacity() == 0) core->out = out_buffers().take();
  // As unsigned char, the same type as the buffer's: the copy is one memcpy,
  // not a loop converting byte by byte.
  const auto* bytes = reinterpret_cast<const unsigned char*>(data);
  core->out.insert(core->out.end(), bytes, bytes + len);
  return len;
}

int bio_read(BIO* bio, char* data, int len) {
  auto* core = static_cast<TlsSocket::Core*>(BIO_get_data(bio));
  BIO_clear_retry_flags(bio);
  if (len <= 0) return 0;
  for (;;) {
    const ssize_t r = ::recv(core->socket.native_handle(), data, static_cast<std::size_t>(len), 0);
    if (r > 0) {
      core->drained = r < len;
      return static_cast<int>(r);
    }
    if (r == 0) {
      core->eof = true;
      return 0;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      core->drained = true;
      BIO_set_retry_read(bio);
      return -1;
    }
    core->recv_errno = errno;
    return -1;
  }
}

long bio_ctrl(BIO*, int cmd, long, void*) {
  // Records are handed to the socket by pump(), not by OpenSSL: a flush is
  // always "done".
  return cmd == BIO_CTRL_FLUSH ? 1 : 0;
}

BIO_METHOD* socket_bio_method() {
  static BIO_METHOD* method = [] {
    BIO_METHOD* m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "clusterconnect tls socket");
    if (!m) return m;
    BIO_meth_set_write(m, bio_write);
    BIO_meth_set_read(m, bio_read);
    BIO_meth_set_ctrl(m, bio_ctrl);
    return m;
  }();
  return method;
}

}  // namespace

namespace {

// Marks the start of an operation (see Core::initiating).
class Initiation {
 public:
  explicit Initiation(TlsSocket::Core& core) : core_(core), was_(core.initiating) { core.initiating = true; }
  ~Initiation() { core_.initiating = was_; }
  Initiation(const Initiation&) = delete;
  Initiation& operator=(const Initiation&) = delete;

 private:
  TlsSocket::Core& core_;
  bool was_;
};

}  // namespace

TlsSocket::TlsSocket(tcp::socket socket, std::shared_ptr<asio::ssl::context> context)
    : core_(std::make_shared<Core>(std::move(socket), std::move(context))) {}

TlsSocket::TlsSocket(const executor_type& executor, std::shared_ptr<asio::ssl::context> context)
    : TlsSocket(tcp::socket(executor), std::move(context)) {}

TlsSocket::TlsSocket(TlsSocket&&) noexcept = default;
TlsSocket& TlsSocket::operator=(TlsSocket&&) noexcept = default;

TlsSocket::~TlsSocket() {
  // Pending operations complete with operation_aborted and let go of the core.
  if (core_) {
    error_code ignored;
    core_->socket.close(ignored);
  }
}

TlsSocket::executor_type TlsSocket::get_executor() noexcept { return core_->socket.get_executor(); }
TlsSocket::next_layer_type& TlsSocket::next_layer() noexcept { return core_->socket; }
TlsSocket::native_handle_type TlsSocket::native_handle() noexcept { return core_->ssl; }

std::size_t TlsSocket::pending_plaintext() const noexcept { return static_cast<std::size_t>(SSL_pending(core_->ssl)); }
std::size_t TlsSocket::buffered_bytes() const noexcept { return core_->out.capacity(); }

void TlsSocket::start_handshake(handshake_type type, UniqueFunction<void(error_code)> done) {
  auto& c = *core_;
  error_code ec;
  if (!c.ready_for_io(ec)) return c.later([done = std::move(done), ec]() mutable { done(ec); });
  c.socket.register_for_reading(ec);
  if (ec) return c.later([done = std::move(done), ec]() mutable { done(ec); });
  if (type == asio::ssl::stream_base::client)
    SSL_set_connect_state(c.ssl);
  else
    SSL_set_accept_state(c.ssl);
  c.handshake_done = std::move(done);
  Initiation scope(c);
  c.handshake_step();
}

void TlsSocket::start_read(asio::mutable_buffer buffer, Completion done) {
  auto& c = *core_;
  error_code ec;
  if (!c.ready_for_io(ec)) return c.later([done = std::move(done), ec]() mutable { done(ec, 0); });
  if (buffer.size() == 0) return c.later([done = std::move(done)]() mutable { done(error_code{}, 0); });
  c.read_buffer = buffer;
  c.read_done = std::move(done);
  Initiation scope(c);
  c.read_step();
}

void TlsSocket::start_write(const Pieces& pieces, Completion done) {
  auto& c = *core_;
  error_code ec;
  if (!c.ready_for_io(ec)) return c.later([done = std::move(done), ec]() mutable { done(ec, 0); });
  if (c.shutdown_sent) return c.later([done = std::move(done)]() mutable { done(asio::error::shut_down, 0); });
  if (c.write_failed) return c.later([done = std::move(done), ec = c.write_failed]() mutable { done(ec, 0); });
  Initiation scope(c);
  // Consecutive pieces that fit in one record together (an HTTP head and a
  // short body, a chunk's size line, data and CRLF) are encrypted as one
  // record: they are copied to a scratch area first, which OpenSSL has
  // encrypted into `out` by the time SSL_write_ex returns.
  thread_local unsigned char scratch[kFullRecord];
  std::size_t plain = 0;
  for (std::size_t i = 0; i < pieces.count && plain < max_write; ++i) plain += pieces.at[i].size();
  c.reserve_output(std::min(plain, max_write), pieces.count);
  std::size_t total = 0;
  for (std::size_t i = 0; i < pieces.count && total < max_write;) {
    std::size_t run = 0, k = i;
    while (k < pieces.count && run + pieces.at[k].size() <= kFullRecord && total + run + pieces.at[k].size() <= max_write)
      run += pieces.at[k++].size();
    const void* data = pieces.at[i].data();
    std::size_t n = std::min(pieces.at[i].size(), max_write - total);
    if (k - i >= 2) {
      for (std::size_t j = i, at = 0; j < k; at += pieces.at[j].size(), ++j)
        std::memcpy(scratch + at, pieces.at[j].data(), pieces.at[j].size());
      data = scratch;
      n = run;
      i = k;
    } else {
      ++i;
    }
    c.before_ssl_call();
    std::size_t written = 0;
    const int r = SSL_write_ex(c.ssl, data, n, &written);
    if (r != 1) {
      const error_code failed = c.failure(SSL_get_error(c.ssl, r));
      if (total > 0) break;  // what was taken goes out; the error comes again next time
      if (!c.out.empty()) c.pump();
      return c.later([done = std::move(done), failed]() mutable { done(failed, 0); });
    }
    total += written;
  }
  // The completion waits in the core: a wrapper holding it and the count
  // would not fit a UniqueFunction's inline room.
  c.write_done = std::move(done);
  c.write_total = total;
  c.drain([self = core_](error_code e) {
    auto d = std::move(self->write_done);
    self->write_done = nullptr;
    d(e, e ? 0 : self->write_total);
  });
}

void TlsSocket::start_shutdown_send(UniqueFunction<void(error_code)> done) {
  auto& c = *core_;
  error_code ec;
  if (!c.ready_for_io(ec)) return c.later([done = std::move(done), ec]() mutable { done(ec); });
  if (c.shutdown_sent) return c.later([done = std::move(done)]() mutable { done(error_code{}); });
  c.shutdown_sent = true;
  Initiation scope(c);
  c.before_ssl_call();
  SSL_shutdown(c.ssl);  // queues close_notify; does not wait for the peer's
  ERR_clear_error();
  c.drain([self = core_, done = std::move(done)](error_code e) mutable {
    error_code ignored;
    self->socket.shutdown(tcp::socket::shutdown_send, ignored);
    done(e);
  });
}

}  // namespace clusterconnect::tls
