#pragma once
// The completion of an operation whose handler waits in a member of its
// owner (one outstanding operation per slot). The operation then carries a
// pointer instead of the handler, small enough for a UniqueFunction or an
// Asio operation to hold inline: a wrapper around a whole UniqueFunction
// would not fit and would go to the heap on every operation.
//
// Run, it takes the handler out of the slot first (the handler may start the
// next operation, which fills the slot again). Destroyed unrun (an executor
// shutting down), it empties the slot, as an operation that held the handler
// itself would drop it: a handler may own the owner, which must not keep it.

#include <memory>
#include <utility>

namespace clusterconnect {

template <class Owner, auto Slot>
class HandlerSlot {
 public:
  explicit HandlerSlot(std::shared_ptr<Owner> owner) noexcept : owner_(std::move(owner)) {}
  HandlerSlot(HandlerSlot&&) noexcept = default;
  HandlerSlot& operator=(HandlerSlot&&) = delete;
  HandlerSlot(const HandlerSlot&) = delete;
  HandlerSlot& operator=(const HandlerSlot&) = delete;
  ~HandlerSlot() {
    if (owner_) ((*owner_).*Slot) = nullptr;
  }

  Owner& owner() const noexcept { return *owner_; }

  // The owner and the handler; the slot is left empty. Once only.
  auto take() noexcept {
    auto owner = std::move(owner_);
    auto handler = std::move((*owner).*Slot);
    ((*owner).*Slot) = nullptr;
    return std::pair(std::move(owner), std::move(handler));
  }

 private:
  std::shared_ptr<Owner> owner_;
};

}  // namespace clusterconnect
