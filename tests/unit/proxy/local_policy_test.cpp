// The local endpoint's policy: the session credential is required, the user's
// token replaces it, and shutdown waits on the last request's completion.
#include <catch2/catch.hpp>
#include <spdlog/sinks/null_sink.h>
#include <spdlog/spdlog.h>

#include <future>

#include "local_endpoint.hpp"

using namespace clusterconnect;
using namespace clusterconnect::proxy;

namespace {

std::shared_ptr<spdlog::logger> quiet() {
  return std::make_shared<spdlog::logger>("test", std::make_shared<spdlog::sinks::null_sink_mt>());
}

http::RequestHead request(std::string target, std::string authorization) {
  http::RequestHead head;
  head.method = "GET";
  head.target = std::move(target);
  head.add("Authorization", std::move(authorization));
  return head;
}

http::Decision decide(LocalPolicy& policy, http::RequestHead& head) {
  http::Decision out;
  policy.on_request(head, [&](http::Decision d) { out = std::move(d); });
  return out;
}

}  // namespace

TEST_CASE("the session credential is swapped for the user's token, anything else is refused", "[proxy][local]") {
  auto token = std::make_shared<ForwardedToken>();
  token->set("user-token");
  LocalPolicy policy("s3cret", token, quiet());

  auto good = request("/api", "Bearer s3cret");
  auto d = decide(policy, good);
  CHECK(d.forward);
  REQUIRE(good.find("authorization") != nullptr);
  CHECK(*good.find("authorization") == "Bearer user-token");

  auto bad = request("/api", "Bearer s3creT");
  d = decide(policy, bad);
  CHECK_FALSE(d.forward);
  CHECK(d.reply.status == 401);
  CHECK(*bad.find("authorization") == "Bearer s3creT");

  policy.on_complete({});
  policy.on_complete({});
  CHECK(policy.in_flight() == 0);
}

TEST_CASE("wait_idle returns when the last request completes, or reports that one is still running",
          "[proxy][local]") {
  auto token = std::make_shared<ForwardedToken>();
  LocalPolicy policy("s3cret", token, quiet());
  CHECK(policy.wait_idle(std::chrono::seconds(0)));

  auto a = request("/a", "Bearer s3cret");
  auto b = request("/b", "Bearer s3cret");
  decide(policy, a);
  decide(policy, b);
  CHECK(policy.in_flight() == 2);
  CHECK_FALSE(policy.wait_idle(std::chrono::milliseconds(1)));

  auto waiter = std::async(std::launch::async, [&] { return policy.wait_idle(std::chrono::minutes(5)); });
  policy.on_complete({});
  CHECK(policy.in_flight() == 1);
  policy.on_complete({});
  CHECK(waiter.get());
  CHECK(policy.in_flight() == 0);
}
