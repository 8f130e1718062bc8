#pragma once
// Result values for control-plane calls that cross a module boundary: a value
// or a one-line, user-facing message. No exceptions cross a module boundary.

#include <optional>
#include <string>
#include <utility>
#include <variant>

namespace clusterconnect {

struct Failure {
  std::string message;  // says what was wrong and what to do; never a secret
};

template <class T>
class Result {
 public:
  Result(T value) : v_(std::move(value)) {}
  Result(Failure f) : v_(std::move(f)) {}

  bool ok() const noexcept { return v_.index() == 0; }
  explicit operator bool() const noexcept { return ok(); }
  T& value() { return std::get<0>(v_); }
  const T& value() const { return std::get<0>(v_); }
  T& operator*() { return value(); }
  T* operator->() { return &value(); }
  const std::string& error() const { return std::get<1>(v_).message; }

 private:
  std::variant<T, Failure> v_;
};

template <>
class Result<void> {
 public:
  Result() = default;
  Result(Failure f) : error_(std::move(f)) {}
  bool ok() const noexcept { return !error_; }
  explicit operator bool() const noexcept { return ok(); }
  const std::string& error() const { return error_->message; }

 private:
  std::optional<Failure> error_;
};

inline Failure fail(std::string message) { return Failure{std::move(message)}; }

}  // namespace clusterconnect
