#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "clusterconnect/http/forward.hpp"

using namespace clusterconnect;

TEST_CASE("RequestHead header helpers are case-insensitive", "[http]") {
  http::RequestHead h;
  h.add("Authorization", "Bearer a");
  h.add("Impersonate-User", "x");
  h.add("impersonate-group", "g1");
  h.add("IMPERSONATE-GROUP", "g2");
  h.add("Accept", "application/json");
  REQUIRE(h.find("authorization"));
  CHECK(*h.find("AUTHORIZATION") == "Bearer a");
  CHECK_FALSE(h.find("Authorizatio"));
  CHECK(h.all("Impersonate-Group") == std::vector<std::string>{"g1", "g2"});
  CHECK(h.remove_prefix("impersonate-") == 3);
  CHECK(h.headers.size() == 2);
  h.set("accept", "application/vnd.kubernetes.protobuf");
  CHECK(h.all("Accept") == std::vector<std::string>{"application/vnd.kubernetes.protobuf"});
  CHECK(h.remove("AUTHORIZATION") == 1);
  CHECK(h.remove("authorization") == 0);
  CHECK(h.headers.size() == 1);
}

TEST_CASE("status_reply builds a metav1 Status", "[http]") {
  auto r = http::status_reply(403, "Forbidden", "user \"bob\" may not \xff connect");
  CHECK(r.status == 403);
  CHECK(r.content_type == "application/json");
  auto j = nlohmann::json::parse(r.body);
  CHECK(j["kind"] == "Status");
  CHECK(j["apiVersion"] == "v1");
  CHECK(j["metadata"].is_object());
  CHECK(j["status"] == "Failure");
  CHECK(j["reason"] == "Forbidden");
  CHECK(j["code"] == 403);
  CHECK_THAT(j["message"].get<std::string>(), Catch::StartsWith("user \"bob\" may not"));
}
