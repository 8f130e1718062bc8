#include <catch2/catch.hpp>

#include "impersonation.hpp"

using namespace clusterconnect;
using namespace clusterconnect::agent;

namespace {
http::RequestHead request_with(std::vector<http::Header> headers) {
  http::RequestHead h;
  h.method = "GET";
  h.target = "/api/v1/namespaces";
  h.headers = std::move(headers);
  return h;
}
}  // namespace

TEST_CASE("caller Impersonate-* headers are detected in any case", "[agent][impersonation]") {
  CHECK_FALSE(has_caller_impersonation(request_with({{"Accept", "application/json"}})));
  CHECK(has_caller_impersonation(request_with({{"Impersonate-User", "admin"}})));
  CHECK(has_caller_impersonation(request_with({{"impersonate-group", "system:masters"}})));
  CHECK(has_caller_impersonation(request_with({{"IMPERSONATE-EXTRA-scopes", "x"}})));
  CHECK(has_caller_impersonation(request_with({{"Impersonate-Uid", "1"}})));
}

TEST_CASE("the bearer token is read from Authorization", "[agent][impersonation]") {
  CHECK(bearer_token(request_with({{"Authorization", "Bearer abc.def.ghi"}})) == "abc.def.ghi");
  CHECK(bearer_token(request_with({{"authorization", "bearer   tok  "}})) == "tok");
  CHECK(bearer_token(request_with({{"Authorization", "Basic dXNlcjpwYXNz"}})).empty());
  CHECK(bearer_token(request_with({})).empty());
}

TEST_CASE("Authorization is replaced and the identity becomes impersonation headers", "[agent][impersonation]") {
  auto head = request_with({{"Authorization", "Bearer user-entra-token"}, {"Accept", "application/json"}});
  Identity id{"alice@contoso.example", "11111111-2222", {"devs", "ops, on-call"}, {{"oid", {"11111111-2222"}}, {"tid", {"tenant-1"}}}};
  REQUIRE(apply_impersonation(head, id, "agent-sa-token"));
  CHECK(head.all("authorization") == std::vector<std::string>{"Bearer agent-sa-token"});
  CHECK(head.all("impersonate-user") == std::vector<std::string>{"alice@contoso.example"});
  CHECK(head.all("impersonate-uid") == std::vector<std::string>{"11111111-2222"});
  // A group containing a comma stays one header value, never split or folded.
  CHECK(head.all("impersonate-group") == std::vector<std::string>{"devs", "ops, on-call"});
  CHECK(head.all("impersonate-extra-oid") == std::vector<std::string>{"11111111-2222"});
  CHECK(head.all("impersonate-extra-tid") == std::vector<std::string>{"tenant-1"});
  CHECK(head.all("accept") == std::vector<std::string>{"application/json"});
  for (const auto& h : head.headers) CHECK(h.value.find("user-entra-token") == std::string::npos);
}

TEST_CASE("extra keys are escaped like client-go does, non-ASCII values are carried as UTF-8", "[agent][impersonation]") {
  CHECK(escape_extra_key("oid") == "oid");
  CHECK(escape_extra_key("example.com/scopes") == "example.com%2Fscopes");
  CHECK(escape_extra_key("a b%c") == "a%20b%25c");
  CHECK(escape_extra_key("gr\xC3\xBC\xC3\x9F") == "gr%C3%BC%C3%9F");
  auto head = request_with({});
  Identity id{"j\xC3\xBCrgen@contoso.example", "u1", {}, {{"d\xC3\xA9partement", {"Z\xC3\xBCrich"}}}};
  REQUIRE(apply_impersonation(head, id, "t"));
  CHECK(head.all("impersonate-extra-d%C3%A9partement") == std::vector<std::string>{"Z\xC3\xBCrich"});
  CHECK(head.all("impersonate-user") == std::vector<std::string>{"j\xC3\xBCrgen@contoso.example"});
}

TEST_CASE("an identity that would split a header is refused and the request is left unchanged", "[agent][impersonation]") {
  auto head = request_with({{"Authorization", "Bearer x"}});
  auto before = head.headers.size();
  CHECK_FALSE(apply_impersonation(head, Identity{"eve\r\nImpersonate-Group: system:masters", "u", {}, {}}, "t"));
  CHECK_FALSE(apply_impersonation(head, Identity{"eve", "u", {"ok", "bad\ngroup"}, {}}, "t"));
  CHECK_FALSE(apply_impersonation(head, Identity{"eve", "u", {}, {{"k", {"v\r"}}}}, "t"));
  CHECK_FALSE(apply_impersonation(head, Identity{"", "u", {}, {}}, "t"));
  CHECK(head.headers.size() == before);
  CHECK(head.all("authorization") == std::vector<std::string>{"Bearer x"});
}
