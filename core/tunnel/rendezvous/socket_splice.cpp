#include "rendezvous/socket_splice.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <mutex>

#include <boost/asio/bind_executor.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>

#include "clusterconnect/executor_dispatch.hpp"

namespace clusterconnect::tunnel::rendezvous {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;

namespace {

// Bytes one pump moves before it lets other work on the thread run.
constexpr std::uint64_t turn_bytes = 1 << 20;
constexpr std::size_t splice_chunk = 1 << 20;
// A read from a leg that took less than this most likely emptied its socket
// (a pipe that stops a read early has filled its slots, which takes many
// small segments): the next turn waits for the leg instead of asking it again
// for an EAGAIN. A wrong guess costs one wake-up: the wait re-arms the
// socket, which reports bytes already there.
constexpr std::size_t drained_below = 16 * 1024;

asio::io_context& context_of(tcp::socket& s) {
  return static_cast<asio::io_context&>(asio::query(s.get_executor(), asio::execution::context));
}

// The socket on its io_context's own executor. A socket handed over on a
// strand (the relay accepts on one) would copy that strand, type-erased and
// so allocated, for every wait; the splice's handlers run on its own
// concrete strand instead. Unchanged when the socket cannot be moved.
tcp::socket on_plain_executor(tcp::socket s) {
  if (!s.is_open()) return s;
  boost::system::error_code ec;
  const auto protocol = s.local_endpoint(ec).protocol();
  if (ec) return s;
  auto& io = context_of(s);
  const auto fd = s.release(ec);
  if (ec) return s;
  tcp::socket out(io);
  out.assign(protocol, fd, ec);
  if (ec) ::close(fd);  // (out stays closed: the splice fails on it and says so)
  return out;
}

void close_fds(PipePool::Fds& f) noexcept {
  if (f.read >= 0) ::close(f.read);
  if (f.write >= 0) ::close(f.write);
  f = {};
}

class Splice final : public SocketSplice, public std::enable_shared_from_this<Splice> {
 public:
  Splice(tcp::socket a, tcp::socket b, SpliceOptions options, Done done)
      : strand_(asio::make_strand(context_of(a))),
        a_(on_plain_executor(std::move(a))),
        b_(on_plain_executor(std::move(b))),
        idle_(strand_),
        options_(options),
        done_(std::move(done)),
        ab_{a_, b_, "a", "b"},
        ba_{b_, a_, "b", "a"} {}

  ~Splice() override {
    release(ab_);
    release(ba_);
  }

  bool init(boost::system::error_code& ec) {
    if (!options_.pipes) options_.pipes = std::make_shared<PipePool>(0, 0);
    a_.native_non_blocking(true, ec);
    if (!ec) b_.native_non_blocking(true, ec);
    return !ec;
  }

  void start() {
    asio::dispatch(strand_, [self = shared_from_this()] {
      self->arm_idle();
      self->pump(self->ab_);
      self->pump(self->ba_);
    });
  }

  void close(std::string reason) override {
    asio::post(strand_, [self = shared_from_this(), reason = std::move(reason)]() mutable {
      self->finish(asio::error::operation_aborted, std::move(reason));
    });
  }

 private:
  struct Direction {
    Direction(tcp::socket& f, tcp::socket& t, const char* fn, const char* tn)
        : from(f), to(t), from_name(fn), to_name(tn) {}
    tcp::socket& from;
    tcp::socket& to;
    const char* from_name;
    const char* to_name;
    PipePool::Fds pipe;  // held only while bytes are in flight
    std::size_t in_pipe = 0;
    std::uint64_t moved = 0;
    bool drained = false;  // the last read most likely emptied `from`
    bool eof = false;
    bool done = false;
  };

  static boost::system::error_code last_error() { return {errno, boost::system::system_category()}; }

  void pump(Direction& d) {
    std::uint64_t this_turn = 0;
    while (!finished_ && !d.done) {
      if (this_turn >= turn_bytes) {
        // Fair to the other direction and to every other splice on this thread.
        asio::post(strand_, [self = shared_from_this(), &d] { self->pump(d); });
        return;
      }
      if (d.in_pipe > 0) {
        const ssize_t n = ::splice(d.pipe.read, nullptr, d.to.native_handle(), nullptr, d.in_pipe,
                                   SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
        if (n > 0) {
          d.in_pipe -= static_cast<std::size_t>(n);
          d.moved += static_cast<std::uint64_t>(n);
          this_turn += static_cast<std::uint64_t>(n);
          active_ = true;
          continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno == EAGAIN) return wait(d, d.to, tcp::socket::wait_write);
        return finish(n < 0 ? last_error() : boost::system::error_code(asio::error::broken_pipe),
                      std::string("sending to leg ") + d.to_name);
      }
      if (d.eof) {
        // Pass the end of stream on; the other direction may still run.
        boost::system::error_code ignored;
        d.to.shutdown(tcp::socket::shutdown_send, ignored);
        d.done = true;
        release(d);
        if (ab_.done && ba_.done) finish({}, "both legs finished");
        return;
      }
      if (d.drained) {
        d.drained = false;
        release(d);
        return wait(d, d.from, tcp::socket::wait_read);
      }
      if (d.pipe.read < 0) {
        boost::system::error_code ec;
        if (!options_.pipes->take(d.pipe, ec)) return finish(ec, "no pipe to splice through");
      }
      // The pipe is empty here, so EAGAIN means the socket has nothing to read.
      const ssize_t n = ::splice(d.from.native_handle(), nullptr, d.pipe.write, nullptr, splice_chunk,
                                 SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
      if (n > 0) {
        d.in_pipe = static_cast<std::size_t>(n);
        d.drained = d.in_pipe < drained_below;
        continue;
      }
      if (n == 0) {
        d.eof = true;
        continue;
      }
      if (errno == EINTR) continue;
      if (errno == EAGAIN) {
        release(d);  // empty: a quiet direction holds no pipe
        return wait(d, d.from, tcp::socket::wait_read);
      }
      return finish(last_error(), std::string("receiving from leg ") + d.from_name);
    }
  }

  void wait(Direction& d, tcp::socket& s, tcp::socket::wait_type type) {
    s.async_wait(type, asio::bind_executor(strand_, [self = shared_from_this(), &d](boost::system::error_code ec) {
                   if (self->finished_) return;
                   if (ec) return self->finish(ec, "waiting on a leg");
                   self->pump(d);
                 }));
  }

  // Gives an empty pipe back; one that still holds bytes is closed.
  void release(Direction& d) noexcept {
    if (d.pipe.read < 0) return;
    if (d.in_pipe == 0 && options_.pipes) options_.pipes->give(d.pipe);
    else close_fds(d.pipe);
    d.pipe = {};
    d.in_pipe = 0;
  }

  // Ends a splice that saw no byte for a whole idle period.
  void arm_idle() {
    idle_.expires_after(options_.idle_timeout);
    idle_.async_wait([self = shared_from_this()](boost::system::error_code ec) {
      if (ec || self->finished_) return;
      if (!self->active_) return self->finish(asio::error::timed_out, "no byte moved within the idle timeout");
      self->active_ = false;
      self->arm_idle();
    });
  }

  void finish(boost::system::error_code ec, std::string reason) {
    if (finished_) return;
    finished_ = true;
    idle_.cancel();
    boost::system::error_code ignored;
    a_.close(ignored);  // completes any wait with operation_aborted
    b_.close(ignored);
    release(ab_);
    release(ba_);
    SpliceResult r;
    r.a_to_b = ab_.moved;
    r.b_to_a = ba_.moved;
    r.ec = ec;
    r.reason = std::move(reason);
    if (auto done = std::move(done_)) done(r);
  }

  IoStrand strand_;
  tcp::socket a_, b_;
  asio::basic_waitable_timer<std::chrono::steady_clock, asio::wait_traits<std::chrono::steady_clock>, IoStrand> idle_;
  SpliceOptions options_;
  Done done_;
  Direction ab_, ba_;
  bool finished_ = false;
  bool active_ = false;
};

}  // namespace

PipePool::PipePool(int pipe_size, std::size_t keep) : pipe_size_(pipe_size), keep_(keep) {}

PipePool::~PipePool() {
  for (auto& f : free_) close_fds(f);
}

bool PipePool::take(Fds& out, boost::system::error_code& ec) {
  {
    std::lock_guard lock(mutex_);
    if (!free_.empty()) {
      out = free_.back();
      free_.pop_back();
      return true;
    }
    ++created_;
  }
  int fds[2];
  if (::pipe2(fds, O_NONBLOCK | O_CLOEXEC) != 0) {
    ec = boost::system::error_code(errno, boost::system::system_category());
    return false;
  }
  // Past the user's pipe budget the kernel refuses a larger size; the
  // default-sized pipe still works.
  if (pipe_size_ > 0) (void)::fcntl(fds[1], F_SETPIPE_SZ, pipe_size_);
  out = Fds{fds[0], fds[1]};
  return true;
}

void PipePool::give(Fds fds) noexcept {
  {
    std::lock_guard lock(mutex_);
    if (free_.size() < keep_) {
      try {
        free_.push_back(fds);
        return;
      } catch (...) {
      }
    }
  }
  close_fds(fds);
}

std::size_t PipePool::kept() const {
  std::lock_guard lock(mutex_);
  return free_.size();
}

std::size_t PipePool::created() const {
  std::lock_guard lock(mutex_);
  return created_;
}

std::shared_ptr<SocketSplice> start_splice(tcp::socket a, tcp::socket b, SpliceOptions options, SocketSplice::Done done,
                                           boost::system::error_code& ec) {
  // splice(2) to a socket whose peer has gone raises SIGPIPE and cannot be
  // told not to (send(2) has MSG_NOSIGNAL): a process that splices ignores it.
  static std::once_flag sigpipe;
  std::call_once(sigpipe, [] {
    struct sigaction old {};
    if (::sigaction(SIGPIPE, nullptr, &old) == 0 && old.sa_handler == SIG_DFL) ::signal(SIGPIPE, SIG_IGN);
  });
  auto s = std::make_shared<Splice>(std::move(a), std::move(b), options, std::move(done));
  if (!s->init(ec)) return nullptr;
  s->start();
  return s;
}

}  // namespace clusterconnect::tunnel::rendezvous
