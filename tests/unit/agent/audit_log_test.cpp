#include <catch2/catch.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <future>
#include <regex>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "../../support/test_env.hpp"
#include "audit_log.hpp"

using namespace clusterconnect;
using namespace clusterconnect::agent;

namespace {

http::ExchangeRecord exec_record() {
  http::ExchangeRecord r;
  r.method = "POST";
  r.target =
      "/api/v1/namespaces/default/pods/web/exec?command=cat&command=%2Fetc%2Fshadow&stdout=true&access_token=eyJsecret";
  r.subject = std::make_shared<http::Subject>(
      http::Subject{"alice@contoso.example", {"devs"}, {{"oid", "oid-1"}, {"tid", "tid-1"}}});
  r.status = 101;
  r.upgraded = true;
  return r;
}

std::vector<nlohmann::json> read_lines(const std::filesystem::path& file) {
  std::vector<nlohmann::json> out;
  std::ifstream in(file);
  for (std::string line; std::getline(in, line);) out.push_back(nlohmann::json::parse(line));
  return out;
}

// The writer writes within its batch window: waits (bounded) until `count`
// whole lines are in the file and returns them.
std::vector<std::string> wait_for_lines(const std::filesystem::path& file, std::size_t count) {
  std::vector<std::string> lines;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (lines.size() < count && std::chrono::steady_clock::now() < deadline) {
    lines.clear();
    std::ifstream in(file);
    // A line counts once its newline is written.
    for (std::string line; std::getline(in, line) && in.good();) lines.push_back(line);
    if (lines.size() < count) std::this_thread::yield();
  }
  return lines;
}

}  // namespace

TEST_CASE("agent audit: credential-bearing query parameters are redacted", "[agent][audit]") {
  CHECK(audit_query("/api/v1/pods") == "");
  CHECK(audit_query("/x?command=ls&command=-l&tty=true") == "command=ls&command=-l&tty=true");
  CHECK(audit_query("/x?access_token=abc&watch=1") == "access_token=[redacted]&watch=1");
  CHECK(audit_query("/x?ACCESS%5FTOKEN=abc") == "ACCESS%5FTOKEN=[redacted]");
  CHECK(audit_query("/x?id_token=a&sig=b&client_secret=c&code=d&password=e") ==
        "id_token=[redacted]&sig=[redacted]&client_secret=[redacted]&code=[redacted]&password=[redacted]");
  CHECK(audit_query("/x?token") == "token=[redacted]");
}

TEST_CASE("agent audit: a record names oid, tid and the query, never a token", "[agent][audit]") {
  test::TempDir dir;
  const auto file = dir.path() / "audit.log";
  {
    auto log = AuditLog::open(file.string());
    REQUIRE(log);
    CHECK(log.value()->write(exec_record(), "entra"));
  }  // the destructor writes everything queued
  auto lines = read_lines(file);
  REQUIRE(lines.size() == 1);
  const auto& l = lines[0];
  CHECK(l["oid"] == "oid-1");
  CHECK(l["tid"] == "tid-1");
  CHECK(l["path"] == "/api/v1/namespaces/default/pods/web/exec");
  CHECK(l["query"] == "command=cat&command=%2Fetc%2Fshadow&stdout=true&access_token=[redacted]");
  CHECK(l.dump().find("eyJsecret") == std::string::npos);
  struct stat st {};
  REQUIRE(::stat(file.c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);
}

TEST_CASE("agent audit: a record that names no caller has an empty user and no groups", "[agent][audit]") {
  test::TempDir dir;
  const auto file = dir.path() / "audit.log";
  {
    auto log = AuditLog::open(file.string());
    REQUIRE(log);
    http::ExchangeRecord r;
    r.method = "GET";
    r.target = "/api/v1/pods";
    r.status = 401;
    CHECK(log.value()->write(r, "rejected"));
  }
  auto lines = read_lines(file);
  REQUIRE(lines.size() == 1);
  CHECK(lines[0]["user"] == "");
  CHECK(lines[0]["groups"] == nlohmann::json::array());
  CHECK(lines[0]["auth"] == "rejected");
  CHECK(lines[0].size() == 12);
}

TEST_CASE("agent audit: a full queue drops and counts, never blocks the writer", "[agent][audit]") {
  test::TempDir dir;
  const auto fifo = dir.path() / "audit.fifo";
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
  // A reader that does not read: once the pipe is full, the log's writer
  // thread is stuck in write(2), as on a hung disk.
  int reader = ::open(fifo.c_str(), O_RDONLY | O_NONBLOCK);
  REQUIRE(reader >= 0);
  auto log = AuditLog::open(fifo.string(), 4);
  REQUIRE(log);

  auto record = exec_record();
  record.target += "&pad=" + std::string(16 * 1024, 'x');
  const int total = 200;  // 3 MiB of lines: far more than the pipe holds
  auto writes = std::async(std::launch::async, [&] {
    int accepted = 0;
    for (int i = 0; i < total; ++i) accepted += log.value()->write(record, "entra") ? 1 : 0;
    return accepted;
  });
  // Without the fix the writes wait for room that never comes.
  REQUIRE(writes.wait_for(std::chrono::seconds(60)) == std::future_status::ready);
  const int accepted = writes.get();
  CHECK(accepted < total);
  CHECK(log.value()->dropped() == static_cast<std::uint64_t>(total - accepted));

  // Drain the pipe so the writer can finish and the log can close.
  std::atomic<bool> done{false};
  std::thread drain([&] {
    char buf[65536];
    int flags = ::fcntl(reader, F_GETFL);
    ::fcntl(reader, F_SETFL, flags & ~O_NONBLOCK);
    while (::read(reader, buf, sizeof buf) > 0) {
    }
    done = true;
  });
  log.value().reset();
  drain.join();
  ::close(reader);
  CHECK(done);
}

TEST_CASE("agent audit: strings are escaped as JSON and invalid UTF-8 is replaced", "[agent][audit]") {
  std::string out;
  json_escape(out, "a\"b\\c\nd\te\x01 caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x94\x91");
  CHECK(out == "a\\\"b\\\\c\\nd\\te\\u0001 caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x94\x91");
  out.clear();
  // A lone continuation byte, a truncated sequence, an overlong form, a surrogate.
  json_escape(out, "x\x80y\xc3z\xc0\xafw\xed\xa0\x80v");
  CHECK(out == "x\xef\xbf\xbdy\xef\xbf\xbdz\xef\xbf\xbd\xef\xbf\xbdw\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbdv");
}

TEST_CASE("agent audit: a record with awkward names is one valid JSON line, written while the log stays open",
          "[agent][audit]") {
  test::TempDir dir;
  const auto file = dir.path() / "audit.log";
  auto log = AuditLog::open(file.string());
  REQUIRE(log);
  auto r = exec_record();
  r.subject = std::make_shared<http::Subject>(http::Subject{
      "eve\"\n{\"user\":\"admin\"}\xff", {"a\\b", ""}, {{"oid", "oid-1"}, {"user", "not a second user field"}}});
  r.notes.push_back({"closed", "by \"the\" deadline"});
  r.duration = std::chrono::microseconds(1500);
  CHECK(log.value()->write(r, "entra"));
  const auto lines = wait_for_lines(file, 1);
  REQUIRE(lines.size() == 1);
  const auto l = nlohmann::json::parse(lines[0]);
  CHECK(l["user"] == "eve\"\n{\"user\":\"admin\"}\xef\xbf\xbd");
  CHECK(l["groups"] == nlohmann::json::array({"a\\b", ""}));
  CHECK(l["status"] == 101);
  CHECK(l["upgrade"] == true);
  CHECK(l["duration_ms"] == 1.5);
  CHECK(l["oid"] == "oid-1");
  CHECK(l["closed"] == "by \"the\" deadline");
  CHECK(l.size() ==
        14);  // the twelve fields, the caller's oid and the exchange's note: the note named user was not added
}

TEST_CASE("agent audit: time is UTC to the millisecond and durations are milliseconds with three decimals",
          "[agent][audit]") {
  test::TempDir dir;
  const auto file = dir.path() / "audit.log";
  auto log = AuditLog::open(file.string());
  REQUIRE(log);
  const auto before = std::chrono::system_clock::now();
  const std::chrono::microseconds durations[] = {std::chrono::microseconds(0), std::chrono::microseconds(7),
                                                 std::chrono::microseconds(1234567), std::chrono::microseconds(-5)};
  for (auto d : durations) {
    auto r = exec_record();
    r.duration = d;
    CHECK(log.value()->write(r, "entra"));
  }
  const auto lines = wait_for_lines(file, 4);
  const auto after = std::chrono::system_clock::now();
  REQUIRE(lines.size() == 4);
  // The number as written, not only as a JSON reader rounds it.
  CHECK(lines[0].find("\"duration_ms\":0.000,") != std::string::npos);
  CHECK(lines[1].find("\"duration_ms\":0.007,") != std::string::npos);
  CHECK(lines[2].find("\"duration_ms\":1234.567,") != std::string::npos);
  CHECK(lines[3].find("\"duration_ms\":0.000,") != std::string::npos);
  const std::regex stamp(R"(^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$)");
  for (const auto& line : lines) {
    const auto l = nlohmann::json::parse(line);
    const std::string t = l["time"];
    REQUIRE(std::regex_match(t, stamp));
    std::tm tm{};
    REQUIRE(strptime(t.c_str(), "%Y-%m-%dT%H:%M:%S", &tm) != nullptr);
    const auto at =
        std::chrono::system_clock::from_time_t(timegm(&tm)) + std::chrono::milliseconds(std::stoi(t.substr(20, 3)));
    CHECK(at >= std::chrono::time_point_cast<std::chrono::milliseconds>(before));
    CHECK(at <= after);
  }
}
