// UniqueFunction: small callables live inside the object (no allocation per
// completion handler), large or throwing-move ones on the heap; both kinds
// move, call and destroy their callable exactly once.
#include "clusterconnect/unique_function.hpp"

#include "alloc_counter.hpp"

#include <catch2/catch.hpp>

#include <array>
#include <memory>
#include <string>

namespace {

struct Counts {
  int alive = 0;
  int destroyed = 0;
  int calls = 0;
};

// A callable that counts its live copies and its calls; Pad sets its size.
template <std::size_t Pad, bool NothrowMove = true>
struct Probe {
  Counts* counts;
  std::array<char, Pad> pad{};
  explicit Probe(Counts* c) : counts(c) { ++counts->alive; }
  Probe(Probe&& other) noexcept(NothrowMove) : counts(other.counts), pad(other.pad) { ++counts->alive; }
  Probe(const Probe&) = delete;
  ~Probe() {
    --counts->alive;
    ++counts->destroyed;
  }
  int operator()(int x) {
    ++counts->calls;
    return x + static_cast<int>(Pad);
  }
};

using Fn = clusterconnect::UniqueFunction<int(int)>;
using Small = Probe<16>;
using Large = Probe<200>;
using ThrowingMove = Probe<8, false>;

}  // namespace

TEST_CASE("UniqueFunction holds a small callable inline and a large one on the heap", "[unique_function]") {
  STATIC_REQUIRE(Fn::stores_inline<Small>);
  STATIC_REQUIRE_FALSE(Fn::stores_inline<Large>);
  STATIC_REQUIRE_FALSE(Fn::stores_inline<ThrowingMove>);  // moving a UniqueFunction never throws
  STATIC_REQUIRE(std::is_nothrow_move_constructible_v<Fn>);
  STATIC_REQUIRE(std::is_nothrow_move_assignable_v<Fn>);

  Counts small_counts, large_counts;
  {
    const long before = allocations();
    Fn small{Small(&small_counts)};
    CHECK(allocations() == before);  // no allocation for the inline callable
    CHECK(small(1) == 17);

    Fn large{Large(&large_counts)};
    CHECK(allocations() == before + 1);  // one for the heap callable
    CHECK(large(1) == 201);
    CHECK(small_counts.alive == 1);
    CHECK(large_counts.alive == 1);
  }
  CHECK(small_counts.alive == 0);
  CHECK(large_counts.alive == 0);
  CHECK(small_counts.calls == 1);
  CHECK(large_counts.calls == 1);
}

TEST_CASE("UniqueFunction moves its callable without copying or leaking it", "[unique_function]") {
  Counts small_counts, large_counts, throwing_counts;
  int large_temporaries = 0;  // arguments moved into the heap copy
  {
    Fn a{Small(&small_counts)};
    Fn b{Large(&large_counts)};
    Fn c{ThrowingMove(&throwing_counts)};
    large_temporaries = large_counts.destroyed;

    const long before = allocations();
    Fn a2 = std::move(a);
    Fn b2 = std::move(b);
    Fn c2 = std::move(c);
    CHECK(allocations() == before);  // moves never allocate
    CHECK_FALSE(a);
    CHECK_FALSE(b);
    CHECK_FALSE(c);
    CHECK(small_counts.alive == 1);  // the inline one was relocated, its old place destroyed
    CHECK(large_counts.alive == 1);  // the heap one changed owner only
    CHECK(large_counts.destroyed == large_temporaries);
    CHECK(throwing_counts.alive == 1);
    CHECK(a2(0) == 16);
    CHECK(b2(0) == 200);
    CHECK(c2(0) == 8);

    // Assignment destroys the target's callable first, once.
    a2 = std::move(b2);
    CHECK(small_counts.alive == 0);
    CHECK(a2(1) == 201);
    a2 = nullptr;
    CHECK_FALSE(a2);
    CHECK(large_counts.alive == 0);

    // Self-move leaves the callable in place.
    Fn& self = c2;
    c2 = std::move(self);
    REQUIRE(c2);
    CHECK(c2(0) == 8);
  }
  CHECK(small_counts.alive == 0);
  CHECK(large_counts.alive == 0);
  CHECK(throwing_counts.alive == 0);
  CHECK(large_counts.destroyed == large_temporaries + 1);  // the heap callable itself was never moved
}

TEST_CASE("UniqueFunction takes move-only captures and passes arguments by value and by reference",
          "[unique_function]") {
  auto owned = std::make_unique<int>(41);
  int* seen = owned.get();
  clusterconnect::UniqueFunction<int(std::unique_ptr<int>, std::string&)> f =
      [owned = std::move(owned)](std::unique_ptr<int> arg, std::string& out) {
        out = "called";
        return *owned + *arg;
      };
  STATIC_REQUIRE(decltype(f)::stores_inline<std::unique_ptr<int>>);
  auto g = std::move(f);
  std::string out;
  CHECK(g(std::make_unique<int>(1), out) == 42);
  CHECK(out == "called");
  CHECK(seen != nullptr);

  // A callable that returns nothing, and the empty state.
  int hits = 0;
  clusterconnect::UniqueFunction<void()> v = [&hits] { ++hits; };
  v();
  CHECK(hits == 1);
  clusterconnect::UniqueFunction<void()> empty;
  CHECK_FALSE(empty);
  clusterconnect::UniqueFunction<void()> null = nullptr;
  CHECK_FALSE(null);
}

TEST_CASE("UniqueFunction runs a callable that replaces its own holder after moving itself out", "[unique_function]") {
  // The completion-handler pattern: take the handler out, then call it; the
  // call may store a new handler in the same place.
  Counts counts;
  Fn holder;
  int second_calls = 0;
  holder = [&holder, &second_calls, probe = Small(&counts)](int x) mutable {
    holder = [&second_calls](int y) {
      ++second_calls;
      return y;
    };
    return probe(x);
  };
  auto h = std::move(holder);
  CHECK(h(1) == 17);
  REQUIRE(holder);
  CHECK(holder(5) == 5);
  CHECK(second_calls == 1);
  h = nullptr;
  CHECK(counts.alive == 0);
}
