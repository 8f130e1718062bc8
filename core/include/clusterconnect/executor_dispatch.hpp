#pragma once
// dispatch/post through an any_io_executor without its per-call allocations.
//
// In Boost 1.74 an any_io_executor stores a strand (and even a plain
// io_context executor) on the heap, and every prefer()/require() that
// asio::dispatch and asio::post apply builds a new one: an allocation per
// handler. The data path's executors are strands of the host's io_context, so
// these recover that concrete type and dispatch on it (no allocation; a strand
// already running on this thread still runs the function inline), and fall
// back to the type-erased executor for anything else.

#include <type_traits>
#include <typeinfo>
#include <utility>

#include "clusterconnect/asio_fwd.hpp"

#include <boost/asio/dispatch.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/strand.hpp>

namespace clusterconnect {

using IoStrand = asio::strand<asio::io_context::executor_type>;

// The executor of type T that `ex` holds, or null. (Boost 1.74's
// any_executor::target<T>() casts without checking the type.)
template <class T>
const T* held_executor(const asio::any_io_executor& ex) noexcept {
  return ex && ex.target_type() == typeid(T) ? ex.target<T>() : nullptr;
}

// Whether `ex` is the executor `erased` holds, without wrapping `ex` in an
// any_io_executor to compare them.
template <class Executor>
bool same_executor(const Executor& ex, const asio::any_io_executor& erased) noexcept {
  if constexpr (std::is_same_v<Executor, asio::any_io_executor>) {
    return ex == erased;
  } else {
    const auto* held = held_executor<Executor>(erased);
    return held != nullptr && *held == ex;
  }
}

// Executors of any other type go to asio::dispatch / asio::post unchanged.
template <class Executor, class F>
void dispatch_on(const Executor& ex, F&& f) {
  if constexpr (std::is_same_v<Executor, asio::any_io_executor>) {
    if (const auto* strand = held_executor<IoStrand>(ex)) return asio::dispatch(*strand, std::forward<F>(f));
    if (const auto* plain = held_executor<asio::io_context::executor_type>(ex))
      return asio::dispatch(*plain, std::forward<F>(f));
  }
  asio::dispatch(ex, std::forward<F>(f));
}

template <class Executor, class F>
void post_on(const Executor& ex, F&& f) {
  if constexpr (std::is_same_v<Executor, asio::any_io_executor>) {
    if (const auto* strand = held_executor<IoStrand>(ex)) return asio::post(*strand, std::forward<F>(f));
    if (const auto* plain = held_executor<asio::io_context::executor_type>(ex))
      return asio::post(*plain, std::forward<F>(f));
  }
  asio::post(ex, std::forward<F>(f));
}

}  // namespace clusterconnect
