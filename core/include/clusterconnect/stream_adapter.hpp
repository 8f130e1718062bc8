#pragma once
// Makes a clusterconnect::Stream usable with Asio/Beast algorithms (it models
// AsyncReadStream and AsyncWriteStream) and delivers completions on the
// handler's associated executor, so a session strand stays a strand.

#include <array>
#include <memory>

#include "clusterconnect/executor_dispatch.hpp"
#include "clusterconnect/stream.hpp"

#include <boost/asio/associated_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/post.hpp>

namespace clusterconnect {

class StreamAdapter {
 public:
  // A concrete strand, not an any_io_executor: Asio's and Beast's composed
  // operations take work on it once per step, which through the type-erased
  // executor is a heap allocation each time.
  using executor_type = IoStrand;

  StreamAdapter(StreamPtr stream, executor_type executor)
      : stream_(std::move(stream)), executor_(std::move(executor)) {}

  executor_type get_executor() const noexcept { return executor_; }
  const StreamPtr& stream() const noexcept { return stream_; }
  // A new owner's executor (a stream handed from one session to another);
  // only while no operation started through this adapter is outstanding.
  void rebind(executor_type executor) { executor_ = std::move(executor); }

  template <class MutableBufferSequence, class Token>
  auto async_read_some(const MutableBufferSequence& buffers, Token&& token) {
    return asio::async_initiate<Token, void(error_code, std::size_t)>(
        [this](auto handler, const MutableBufferSequence& bufs) {
          asio::mutable_buffer first;
          for (auto it = asio::buffer_sequence_begin(bufs); it != asio::buffer_sequence_end(bufs); ++it) {
            if (asio::mutable_buffer b(*it); b.size() > 0) {
              first = b;
              break;
            }
          }
          if (first.size() == 0) {
            auto ex = asio::get_associated_executor(handler, executor_);
            post_on(ex, [h = std::move(handler)]() mutable { h(error_code{}, 0); });
            return;
          }
          stream_->async_read_some(first, wrap(std::move(handler)));
        },
        token, buffers);
  }

  template <class ConstBufferSequence, class Token>
  auto async_write_some(const ConstBufferSequence& buffers, Token&& token) {
    return asio::async_initiate<Token, void(error_code, std::size_t)>(
        [this](auto handler, const ConstBufferSequence& bufs) {
          std::array<asio::const_buffer, 16> list;
          std::size_t n = 0;
          for (auto it = asio::buffer_sequence_begin(bufs); it != asio::buffer_sequence_end(bufs) && n < list.size(); ++it) {
            if (asio::const_buffer b(*it); b.size() > 0) list[n++] = b;
          }
          if (n == 0) {
            auto ex = asio::get_associated_executor(handler, executor_);
            post_on(ex, [h = std::move(handler)]() mutable { h(error_code{}, 0); });
            return;
          }
          stream_->async_write_some(std::span<const asio::const_buffer>(list.data(), n), wrap(std::move(handler)));
        },
        token, buffers);
  }

 private:
  template <class Handler>
  IoHandler wrap(Handler handler) {
    auto ex = asio::get_associated_executor(handler, executor_);
    return [h = std::move(handler), ex](error_code ec, std::size_t n) mutable {
      dispatch_on(ex, [h = std::move(h), ec, n]() mutable { h(ec, n); });
    };
  }

  StreamPtr stream_;
  executor_type executor_;
};

}  // namespace clusterconnect
