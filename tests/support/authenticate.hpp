#pragma once
// Drives an authenticator to its outcome in a test: runs the io_context
// until the handler ran (a key fetch completes on another thread and posts
// back), bounded in count and time, and checks what every rejection must
// satisfy: it says why, and never repeats the credential.

#include <catch2/catch.hpp>

#include <boost/asio/io_context.hpp>

#include <chrono>
#include <future>
#include <optional>
#include <string>
#include <thread>

#include "clusterconnect/authenticator.hpp"

namespace clusterconnect::test {

inline AuthOutcome authenticate_now(boost::asio::io_context& io, Authenticator& authenticator,
                                    const std::string& token) {
  std::optional<AuthOutcome> out;
  authenticator.async_authenticate(token, [&](AuthOutcome o) { out = std::move(o); });
  for (int i = 0; i < 1000 && !out; ++i) {
    io.restart();
    io.run_for(std::chrono::milliseconds(5));
    if (!out) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  REQUIRE(out);
  if (!out->ok()) {
    CHECK_FALSE(out->message.empty());
    if (token.size() > 40) CHECK(out->message.find(token.substr(token.size() - 40)) == std::string::npos);
    auto dot = token.find('.');
    if (dot != std::string::npos && dot > 20) CHECK(out->message.find(token.substr(0, dot)) == std::string::npos);
  }
  return *out;
}

// On a host whose io threads run: waits (at most 5 s) for the outcome.
inline AuthOutcome authenticate_on_host(Authenticator& authenticator, const std::string& token) {
  std::promise<AuthOutcome> done;
  authenticator.async_authenticate(token, [&](AuthOutcome o) { done.set_value(std::move(o)); });
  auto f = done.get_future();
  REQUIRE(f.wait_for(std::chrono::seconds(5)) == std::future_status::ready);
  return f.get();
}

}  // namespace clusterconnect::test
