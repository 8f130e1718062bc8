#pragma once
// A move-only type-erased callable (std::move_only_function arrives in C++23).
// Completion handlers on the data path are move-only, so std::function cannot
// hold them.
//
// Callables of up to inline_capacity bytes whose move cannot throw live inside
// the object: most completion lambdas (a shared_ptr to their owner and a few
// values) then cost no allocation per operation. Larger ones, and ones whose
// move may throw (moving this object never throws), go to the heap.

#include <cstddef>
#include <new>
#include <type_traits>
#include <utility>

namespace clusterconnect {

template <class Signature>
class UniqueFunction;

template <class R, class... Args>
class UniqueFunction<R(Args...)> {
 public:
  static constexpr std::size_t inline_capacity = 64;

  // Whether a callable of type F is held without a heap allocation.
  template <class F>
  static constexpr bool stores_inline = sizeof(F) <= inline_capacity && alignof(F) <= alignof(std::max_align_t) &&
                                        std::is_nothrow_move_constructible_v<F>;

  UniqueFunction() noexcept = default;
  UniqueFunction(std::nullptr_t) noexcept {}

  template <class F, class = std::enable_if_t<!std::is_same_v<std::decay_t<F>, UniqueFunction> &&
                                              std::is_invocable_r_v<R, std::decay_t<F>&, Args...>>>
  UniqueFunction(F&& f) {
    using Fn = std::decay_t<F>;
    if constexpr (stores_inline<Fn>) {
      ::new (static_cast<void*>(storage_.bytes)) Fn(std::forward<F>(f));
      ops_ = &inline_ops<Fn>;
    } else {
      storage_.heap = new Fn(std::forward<F>(f));
      ops_ = &heap_ops<Fn>;
    }
  }

  UniqueFunction(UniqueFunction&& other) noexcept { take(other); }
  UniqueFunction& operator=(UniqueFunction&& other) noexcept {
    if (this != &other) {
      reset();
      take(other);
    }
    return *this;
  }
  UniqueFunction& operator=(std::nullptr_t) noexcept {
    reset();
    return *this;
  }
  UniqueFunction(const UniqueFunction&) = delete;
  UniqueFunction& operator=(const UniqueFunction&) = delete;
  ~UniqueFunction() { reset(); }

  explicit operator bool() const noexcept { return ops_ != nullptr; }

  R operator()(Args... args) { return ops_->call(storage_, std::forward<Args>(args)...); }

 private:
  union Storage {
    void* heap;
    alignas(std::max_align_t) unsigned char bytes[inline_capacity];
  };
  struct Ops {
    R (*call)(Storage&, Args&&...);
    // Moves the callable from `from` into the empty `to`; `from` is left empty.
    void (*relocate)(Storage& from, Storage& to) noexcept;
    void (*destroy)(Storage&) noexcept;
  };

  template <class Fn>
  static Fn& inline_object(Storage& s) noexcept {
    return *std::launder(reinterpret_cast<Fn*>(s.bytes));
  }

  template <class Fn>
  static constexpr Ops inline_ops{
      [](Storage& s, Args&&... args) -> R { return inline_object<Fn>(s)(std::forward<Args>(args)...); },
      [](Storage& from, Storage& to) noexcept {
        Fn& f = inline_object<Fn>(from);
        ::new (static_cast<void*>(to.bytes)) Fn(std::move(f));
        f.~Fn();
      },
      [](Storage& s) noexcept { inline_object<Fn>(s).~Fn(); }};

  template <class Fn>
  static constexpr Ops heap_ops{
      [](Storage& s, Args&&... args) -> R { return (*static_cast<Fn*>(s.heap))(std::forward<Args>(args)...); },
      [](Storage& from, Storage& to) noexcept { to.heap = std::exchange(from.heap, nullptr); },
      [](Storage& s) noexcept { delete static_cast<Fn*>(s.heap); }};

  void take(UniqueFunction& other) noexcept {
    if (other.ops_ == nullptr) return;
    other.ops_->relocate(other.storage_, storage_);
    ops_ = std::exchange(other.ops_, nullptr);
  }
  void reset() noexcept {
    if (ops_ == nullptr) return;
    // Cleared first: the callable's destructor may reach this object again.
    const Ops* ops = std::exchange(ops_, nullptr);
    ops->destroy(storage_);
  }

  Storage storage_;
  const Ops* ops_ = nullptr;
};

}  // namespace clusterconnect
