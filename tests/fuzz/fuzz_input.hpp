#pragma once
// A fuzz input read front to back as a script: bytes, big-endian numbers,
// runs of bytes. Past its end every number is zero and every run empty, so a
// target never needs to check lengths.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

namespace clusterconnect::fuzz {

class Input {
 public:
  Input(const std::uint8_t* data, std::size_t size) : data_(data), size_(size) {}
  bool done() const { return at_ >= size_; }
  std::uint8_t byte() { return at_ < size_ ? data_[at_++] : 0; }
  std::uint16_t u16() { return static_cast<std::uint16_t>(byte() << 8 | byte()); }
  std::uint32_t u32() { return static_cast<std::uint32_t>(u16()) << 16 | u16(); }
  // Up to `n` bytes (fewer at the end).
  std::span<const std::uint8_t> bytes(std::size_t n) {
    n = std::min(n, size_ - std::min(at_, size_));
    std::span<const std::uint8_t> out(data_ + at_, n);
    at_ += n;
    return out;
  }
  std::string text(std::size_t n) {
    const auto b = bytes(n);
    return std::string(b.begin(), b.end());
  }

 private:
  const std::uint8_t* data_;
  std::size_t size_;
  std::size_t at_ = 0;
};

}  // namespace clusterconnect::fuzz
