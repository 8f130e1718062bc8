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

namespace {

// Records what it is asked to sign; each signature is new.
class RecordingSigner final : public PopSigner {
 public:
  std::string thumbprint() const override { return "thumb"; }
  Result<std::string> sign_request(const std::string& access_token, const std::string& target) noexcept override {
    std::lock_guard lock(mutex);
    calls.emplace_back(access_token, target);
    if (fail_next) return fail("the key is gone");
    return "shr-" + std::to_string(calls.size()) + "-" + access_token + "-" + target;
  }
  std::mutex mutex;
  std::vector<std::pair<std::string, std::string>> calls;
  bool fail_next = false;
};

}  // namespace

TEST_CASE("with --pop every forwarded request carries its own Signed HTTP Request for the cluster",
          "[proxy][local][pop]") {
  auto token = std::make_shared<ForwardedToken>();
  token->set("pop-token");
  auto signer = std::make_shared<RecordingSigner>();
  const std::string cluster = cluster_resource_id("SUB-1", "Prod", "Prod-EU");
  CHECK(cluster == "/subscriptions/sub-1/resourcegroups/prod/providers/microsoft.kubernetes/connectedclusters/prod-eu");
  LocalPolicy policy("s3cret", token, quiet(), PopSigning{signer, cluster});

  auto first = request("/api", "Bearer s3cret");
  CHECK(decide(policy, first).forward);
  CHECK(*first.find("authorization") == "Bearer shr-1-pop-token-" + cluster);
  // The renewed token goes into the next signature.
  token->set("renewed");
  auto second = request("/api/v1/pods", "Bearer s3cret");
  CHECK(decide(policy, second).forward);
  CHECK(*second.find("authorization") == "Bearer shr-2-renewed-" + cluster);
  REQUIRE(signer->calls.size() == 2);

  // Nothing is signed for a caller without the session credential.
  auto stranger = request("/api", "Bearer guess");
  CHECK_FALSE(decide(policy, stranger).forward);
  CHECK(signer->calls.size() == 2);

  // A signing failure is an error reply, never the bare token.
  signer->fail_next = true;
  auto failed = request("/api", "Bearer s3cret");
  auto d = decide(policy, failed);
  CHECK_FALSE(d.forward);
  CHECK(d.reply.status == 500);
  CHECK(*failed.find("authorization") == "Bearer s3cret");
}
