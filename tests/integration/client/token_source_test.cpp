// The host's token source and the tunnel-ws client: whatever the host's
// function throws ends at the host's side of the module boundary and comes
// back as a dial error that says what happened.

#include <catch2/catch.hpp>

#include <stdexcept>

#include "relay_fixture.hpp"

using namespace clusterconnect;
using namespace clusterconnect::test;
using namespace std::chrono_literals;

TEST_CASE("a token source that throws gives a clear dial error, and the tunnel recovers", "[tunnel][client]") {
  RelayProcess relay;
  ModuleHost host;
  std::atomic<int> mode{0};
  auto client = host.transport().dial(relay.endpoint(), [&]() -> std::string {
    switch (mode.load()) {
      case 0:
        throw std::runtime_error("credential store locked");
      case 1:
        throw 42;  // not even a std::exception
      default:
        return relay.connect_token();
    }
  });
  REQUIRE(client);

  auto first = open_stream(*client, {{"mode", "echo"}});
  REQUIRE(first.ec);
  CHECK(first.reason.find("no relay token") != std::string::npos);
  CHECK(first.reason.find("credential store locked") != std::string::npos);

  mode = 1;
  auto second = open_stream(*client, {{"mode", "echo"}});
  REQUIRE(second.ec);
  CHECK(second.reason.find("no relay token") != std::string::npos);
  CHECK(second.reason.find("unknown exception") != std::string::npos);

  // The I/O threads survived: with a token the tunnel comes up (no agent is
  // connected, so the relay answers the stream itself).
  mode = 2;
  auto third = open_stream(*client, {{"mode", "echo"}});
  INFO(third.reason);
  CHECK(third.reason.find("no relay token") == std::string::npos);
  CHECK(third.reason.find("no agent connected") != std::string::npos);
  client->close();
}

TEST_CASE("a TokenSource never throws and reports an empty source", "[tunnel][client]") {
  TokenSource none;
  CHECK_FALSE(none);
  auto r = none();
  REQUIRE_FALSE(r);
  TokenSource throws = []() -> std::string { throw std::logic_error("boom"); };
  auto t = throws();
  REQUIRE_FALSE(t);
  CHECK(t.error().find("boom") != std::string::npos);
  TokenSource fine = [] { return std::string("SharedAccessSignature sr=x"); };
  auto f = fine();
  REQUIRE(f);
  CHECK(f.value() == "SharedAccessSignature sr=x");
}
