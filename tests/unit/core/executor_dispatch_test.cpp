// dispatch_on / post_on: through an any_io_executor that holds a strand they
// run on that strand, and cost no more allocations than the strand itself.
#include "clusterconnect/executor_dispatch.hpp"

#include <catch2/catch.hpp>

#include <functional>

#include "alloc_counter.hpp"

using namespace clusterconnect;

namespace {

// A chain of `steps` hops through `hop` (each handler starts the next, as
// completions do), begun inside the io_context so Asio's per-thread recycled
// operation memory is in use; returns the allocations the chain made.
template <class Hop>
long chain_allocations(asio::io_context& io, int steps, Hop hop) {
  long before = 0, after = 0;
  int left = steps;
  std::function<void()> step;  // built once, outside the measured part
  step = [&] {
    if (--left == 0) {
      after = allocations();
      return;
    }
    hop([&] { step(); });
  };
  asio::post(io, [&] {
    // One warm-up hop, then the measured ones.
    hop([&] {
      before = allocations();
      step();
    });
  });
  io.run();
  io.restart();
  REQUIRE(left == 0);
  return after - before;
}

}  // namespace

TEST_CASE("same_executor compares a concrete strand with the any_io_executor holding it", "[executor]") {
  asio::io_context io;
  const IoStrand a = asio::make_strand(io);
  const IoStrand b = asio::make_strand(io);
  const asio::any_io_executor erased_a = a;
  CHECK(same_executor(a, erased_a));
  CHECK_FALSE(same_executor(b, erased_a));
  CHECK(same_executor(erased_a, erased_a));
  CHECK_FALSE(same_executor(io.get_executor(), erased_a));  // the io_context is not its strand
  const asio::any_io_executor plain = io.get_executor();
  CHECK(same_executor(io.get_executor(), plain));
}

TEST_CASE("post_on and dispatch_on run on the strand an any_io_executor holds", "[executor]") {
  asio::io_context io;
  const IoStrand strand = asio::make_strand(io);
  const asio::any_io_executor erased = strand;
  bool on_strand = false, inline_in_strand = false, ran_later = false;
  post_on(erased, [&] {
    on_strand = strand.running_in_this_thread();
    bool ran = false;
    dispatch_on(erased, [&] { ran = true; });  // already on the strand: runs now
    inline_in_strand = ran;
    post_on(erased, [&] { ran_later = true; });
    CHECK_FALSE(ran_later);  // post never runs inline
  });
  io.run();
  CHECK(on_strand);
  CHECK(inline_in_strand);
  CHECK(ran_later);
}

TEST_CASE("post_on through an any_io_executor costs no more allocations than the strand it holds", "[executor]") {
  asio::io_context io;
  const IoStrand strand = asio::make_strand(io);
  const asio::any_io_executor erased = strand;
  constexpr int steps = 200;
  const long concrete = chain_allocations(io, steps, [&](auto f) { asio::post(strand, std::move(f)); });
  const long through_erased = chain_allocations(io, steps, [&](auto f) { post_on(erased, std::move(f)); });
  // Plain asio::post through the erased executor rebuilds it (a heap
  // allocation) on every call: the measurement can tell the difference.
  const long plain_erased = chain_allocations(io, steps, [&](auto f) { asio::post(erased, std::move(f)); });
  CHECK(through_erased <= concrete);
  CHECK(plain_erased >= concrete + steps - 1);
}
