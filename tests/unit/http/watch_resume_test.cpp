#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "clusterconnect/http/watch_resume.hpp"

using namespace clusterconnect::http;

namespace {

std::string event(const std::string& type, const std::string& rv) {
  return R"({"type":")" + type + R"(","object":{"kind":"Namespace","metadata":{"name":"n)" + rv +
         R"(","resourceVersion":")" + rv + "\"}}}\n";
}

const std::string kTarget = "/api/v1/namespaces?watch=true&resourceVersion=5";

}  // namespace

TEST_CASE("watch lines: only whole lines go out and a line split across reads comes out whole", "[http][watch]") {
  WatchEventLines w(kTarget);
  const std::string a = event("ADDED", "6"), b = event("MODIFIED", "7");
  CHECK(w.feed(a + b.substr(0, 10)) == a);
  CHECK(w.resource_version() == "6");
  CHECK(w.feed(b.substr(10, 5)).empty());
  CHECK(w.resource_version() == "6");
  CHECK(w.feed(b.substr(15)) == b);
  CHECK(w.resource_version() == "7");
  CHECK(w.lines_delivered() == 2);
}

TEST_CASE("watch lines: a partial line at a break is dropped and the resumed watch sends it whole", "[http][watch]") {
  WatchEventLines w(kTarget);
  const std::string a = event("ADDED", "6"), b = event("DELETED", "7");
  CHECK(w.feed(a + b.substr(0, 20)) == a);
  w.discard_partial();
  REQUIRE(w.resumable());
  CHECK(w.resume_target() == "/api/v1/namespaces?watch=true&resourceVersion=6");
  // The resumed response starts with the event the break cut.
  CHECK(w.feed(b) == b);
  CHECK(w.resource_version() == "7");
}

TEST_CASE("watch lines: BOOKMARK events move the resume point", "[http][watch]") {
  WatchEventLines w(kTarget);
  w.feed(event("ADDED", "6"));
  const std::string bookmark =
      R"({"type":"BOOKMARK","object":{"kind":"Namespace","metadata":{"resourceVersion":"42"}}})"
      "\n";
  CHECK(w.feed(bookmark) == bookmark);
  CHECK(w.resource_version() == "42");
}

TEST_CASE("watch lines: a Table event names its version in its row's object", "[http][watch]") {
  WatchEventLines w(kTarget);
  const std::string table =
      R"({"type":"ADDED","object":{"kind":"Table","apiVersion":"meta.k8s.io/v1","metadata":{},"columnDefinitions":[],)"
      R"("rows":[{"cells":["a"],"object":{"kind":"PartialObjectMetadata","metadata":{"name":"a","resourceVersion":"17"}}}]}})"
      "\n";
  CHECK(w.feed(table) == table);
  CHECK(w.resource_version() == "17");
}

TEST_CASE("watch lines: a line that is not a JSON event passes but names no resourceVersion", "[http][watch]") {
  WatchEventLines w(kTarget);
  w.feed(event("ADDED", "6"));
  const std::string junk = "this is not json {\"resourceVersion\":\"99\"}\n";
  CHECK(w.feed(junk) == junk);
  const std::string no_object = R"({"type":"ADDED","object":"x","metadata":{"resourceVersion":"98"}})"
                                "\n";
  CHECK(w.feed(no_object) == no_object);
  const std::string numeric = R"({"type":"ADDED","object":{"metadata":{"resourceVersion":97}}})"
                              "\n";
  CHECK(w.feed(numeric) == numeric);
  CHECK(w.feed("\n") == "\n");
  CHECK(w.resource_version() == "6");
  CHECK(w.lines_delivered() == 5);
  CHECK(w.resumable());
}

TEST_CASE("watch lines: at the normal end a last line without a newline is delivered", "[http][watch]") {
  WatchEventLines w(kTarget);
  std::string last = event("ADDED", "8");
  last.pop_back();
  CHECK(w.feed(last).empty());
  CHECK(w.feed({}, true) == last);
  CHECK(w.resource_version() == "8");
}

TEST_CASE("watch lines: a watch without a starting resourceVersion resumes only before its first event",
          "[http][watch]") {
  WatchEventLines w("/api/v1/namespaces?watch=1");
  CHECK(w.resumable());
  CHECK(w.resume_target() == "/api/v1/namespaces?watch=1");
  // Synthetic ADDED events of the current state carry their objects' own
  // versions, in no order: not a point to resume from.
  w.feed(event("ADDED", "900"));
  CHECK(w.resource_version().empty());
  CHECK_FALSE(w.resumable());

  WatchEventLines zero("/api/v1/namespaces?watch=1&resourceVersion=0");
  zero.feed(event("ADDED", "3"));
  CHECK_FALSE(zero.resumable());
}

TEST_CASE("watch lines: with sendInitialEvents the resume point starts at the initial-events-end bookmark",
          "[http][watch]") {
  WatchEventLines w(
      "/api/v1/namespaces?watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true");
  w.feed(event("ADDED", "30"));
  CHECK_FALSE(w.resumable());
  w.feed(
      R"({"type":"BOOKMARK","object":{"metadata":{"resourceVersion":"50","annotations":{"k8s.io/initial-events-end":"true"}}}})"
      "\n");
  CHECK(w.resource_version() == "50");
  w.feed(event("MODIFIED", "51"));
  CHECK(w.resource_version() == "51");
  CHECK(w.resume_target() == "/api/v1/namespaces?watch=1&allowWatchBookmarks=true&resourceVersion=51");
}

TEST_CASE("watch lines: a line past the limit ends tracking and the rest passes as is", "[http][watch]") {
  WatchEventLines w(kTarget, 64);
  w.feed(event("ADDED", "6"));
  const std::string big(100, 'x');
  CHECK(w.feed(big) == big);
  CHECK_FALSE(w.tracking());
  CHECK_FALSE(w.resumable());
  CHECK(w.feed("tail") == "tail");
}

TEST_CASE("resume targets replace the resourceVersion and drop what only starts a watch", "[http][watch]") {
  CHECK(resume_target("/api/v1/pods?watch=true&resourceVersion=5&timeoutSeconds=300", "12") ==
        "/api/v1/pods?watch=true&timeoutSeconds=300&resourceVersion=12");
  CHECK(resume_target("/api/v1/watch/pods", "12") == "/api/v1/watch/pods?resourceVersion=12");
  CHECK(resume_target(
            "/api/v1/pods?resourceVersionMatch=NotOlderThan&sendInitialEvents=true&watch=1&labelSelector=a%3Db", "7") ==
        "/api/v1/pods?watch=1&labelSelector=a%3Db&resourceVersion=7");
  CHECK(resume_target("/x?watch=1", "a/b c") == "/x?watch=1&resourceVersion=a%2Fb%20c");
}

TEST_CASE("watch requests are GETs with watch=true or 1, or of a /watch/ path", "[http][watch]") {
  CHECK(is_watch_request("GET", "/api/v1/namespaces?watch=true"));
  CHECK(is_watch_request("GET", "/api/v1/namespaces?resourceVersion=3&watch=1"));
  CHECK(is_watch_request("GET", "/api/v1/watch/namespaces"));
  CHECK(is_watch_request("GET", "/apis/apps/v1/watch/namespaces/a/deployments?resourceVersion=1"));
  CHECK_FALSE(is_watch_request("GET", "/api/v1/namespaces"));
  CHECK_FALSE(is_watch_request("GET", "/api/v1/namespaces?watch=false"));
  CHECK_FALSE(is_watch_request("GET", "/api/v1/namespaces?watch=0"));
  CHECK_FALSE(is_watch_request("POST", "/api/v1/namespaces?watch=true"));
  CHECK(is_json_watch_body("application/json", ""));
  CHECK(is_json_watch_body("application/json;stream=watch", "identity"));
  CHECK_FALSE(is_json_watch_body("application/vnd.kubernetes.protobuf;stream=watch", ""));
  CHECK_FALSE(is_json_watch_body("application/json", "gzip"));
}

TEST_CASE("a resumed watch refused by the cluster becomes an ERROR event carrying a Status", "[http][watch]") {
  const std::string gone =
      R"J({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"too old resource version: 5 (9)","reason":"Expired","code":410})J";
  auto line = watch_error_event(410, gone);
  REQUIRE(line.back() == '\n');
  auto j = nlohmann::json::parse(line);
  CHECK(j["type"] == "ERROR");
  CHECK(j["object"]["code"] == 410);
  CHECK(j["object"]["reason"] == "Expired");
  CHECK(j["object"]["message"] == "too old resource version: 5 (9)");

  auto text = nlohmann::json::parse(watch_error_event(403, "forbidden\n"));
  CHECK(text["type"] == "ERROR");
  CHECK(text["object"]["kind"] == "Status");
  CHECK(text["object"]["code"] == 403);
  CHECK_THAT(text["object"]["message"].get<std::string>(), Catch::Contains("forbidden"));
}
