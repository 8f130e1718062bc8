// Hybrid Connections HTTP mode through a real relay: an HTTPS request to
// https://HOST/PATH/… reaches a listener of the hybrid connection as a
// `request` message (on its control channel, or on a rendezvous WebSocket
// when it is larger than a control message), and the listener's `response`
// goes back to the sender as an HTTP response. What either side gets wrong
// gets a clear answer. Microsoft's hyco-https drives the same paths in
// tests/fixtures/hyco.

#include <catch2/catch.hpp>

#include <atomic>
#include <fstream>
#include <thread>

#include "clusterconnect/ascii.hpp"
#include "hc_clients.hpp"
#include "relay_fixture.hpp"

using namespace clusterconnect;
using namespace clusterconnect::test;

namespace {

struct Answer {
  unsigned status = 0;  // 0: curl failed or the answer was not HTTP (see raw)
  std::map<std::string, std::string> headers;  // names lowercased
  std::string body;
  std::string raw;
};

// One HTTP-mode request from curl (never Expect: 100-continue): the relay's
// whole answer. Safe to call from another thread (no assertions here).
Answer send(const RelayProcess& relay, const std::string& method, const std::string& target,
            const std::optional<std::string>& token, const std::string& body = {},
            const std::map<std::string, std::string>& headers = {}) {
  static std::atomic<int> n{0};
  std::string cmd = "curl -sS --max-time 40 -i --cacert " + quote(relay.ca_file()) + " -H 'Expect:'";
  cmd += method == "HEAD" ? std::string(" -I") : " -X " + method;
  if (token) cmd += " -H " + quote("ServiceBusAuthorization: " + *token);
  for (const auto& [k, v] : headers) cmd += " -H " + quote(k + ": " + v);
  if (!body.empty()) {
    const auto file = relay.dir() / ("body-" + std::to_string(n++));
    std::ofstream(file, std::ios::binary) << body;
    cmd += " --data-binary @" + quote(file.string());
  }
  auto r = run(cmd + " " + quote("https://" + relay.host() + target));
  Answer a;
  a.raw = r.output.substr(0, 2000);
  const auto head_end = r.output.find("\r\n\r\n");
  if (r.status != 0 || head_end == std::string::npos || r.output.rfind("HTTP/1.1 ", 0) != 0) return a;
  std::string_view head(r.output.data(), head_end);
  a.body = r.output.substr(head_end + 4);
  a.status = static_cast<unsigned>(std::stoul(std::string(head.substr(9, 3))));
  auto pos = head.find("\r\n");
  while (pos != std::string_view::npos) {
    const auto next = head.find("\r\n", pos + 2);
    auto line = head.substr(pos + 2, next == std::string_view::npos ? std::string_view::npos : next - pos - 2);
    const auto colon = line.find(':');
    if (colon != std::string_view::npos)
      a.headers[ascii_lowered(std::string(line.substr(0, colon)))] = std::string(line.substr(colon + 2));
    pos = next;
  }
  return a;
}

// The next control-channel message, parsed, of the kind expected.
template <class Message>
Message next_message(ControlClient& agent) {
  auto text = agent.next();
  REQUIRE(text);
  auto m = rv::parse_control_message(*text);
  INFO(*text);
  REQUIRE(m.state == rv::ControlParse::State::ok);
  auto* got = std::get_if<Message>(&m.message);
  REQUIRE(got);
  return *got;
}

template <class Message>
Message read_message(RawWs& ws) {
  auto got = ws.read();
  REQUIRE(got);
  REQUIRE(got->first);
  auto m = rv::parse_control_message(got->second);
  REQUIRE(m.state == rv::ControlParse::State::ok);
  auto* message = std::get_if<Message>(&m.message);
  REQUIRE(message);
  return *message;
}

std::string response_json(const std::string& id, unsigned status, const nlohmann::json& headers, bool body,
                          const std::string& description = "") {
  return nlohmann::json{{"response",
                         {{"requestId", id},
                          {"statusCode", status},
                          {"statusDescription", description},
                          {"responseHeaders", headers},
                          {"body", body}}}}
      .dump();
}

std::string pattern(std::size_t n, unsigned seed) {
  std::string s(n, '\0');
  for (std::size_t i = 0; i < n; ++i) s[i] = static_cast<char>('a' + (i * 7 + seed) % 26);
  return s;
}

}  // namespace

TEST_CASE("HTTP mode: a request reaches a listener on its control channel and its response goes back to the sender",
          "[relay][hc][http]") {
  auto relay = same_named_clusters();
  ControlClient agent(relay, path_a, relay.token("listen", "a-listen", path_a));
  Answer answer;
  std::thread sender([&] {
    answer = send(relay, "POST", "/" + path_a + "/orders/7?full=1&sb-hc-token=ignored", relay.token("connect", "a-connect", path_a),
                  "ping", {{"X-Trace", "7"}, {"Content-Type", "text/plain"}});
  });
  auto request = next_message<rv::RequestMessage>(agent);
  CHECK(request.method == "POST");
  // The path as sent, the relay's own parameters taken out.
  CHECK(request.target == "/" + path_a + "/orders/7?full=1");
  CHECK_THAT(request.address, Catch::StartsWith("wss://" + relay.host() + "/$hc/" + path_a + "?sb-hc-action=request&sb-hc-id="));
  CHECK_THAT(request.address, Catch::EndsWith(request.id));
  std::map<std::string, std::string> headers;
  for (const auto& [k, v] : request.headers) headers[ascii_lowered(k)] = v;
  CHECK(headers["x-trace"] == "7");
  CHECK(headers["content-type"] == "text/plain");
  CHECK(headers.count("servicebusauthorization") == 0);
  REQUIRE(request.remote_endpoint);
  CHECK(request.remote_endpoint->address == "127.0.0.1");
  REQUIRE(request.body);
  CHECK(agent.next() == std::optional<std::string>("ping"));

  agent.send_text(response_json(request.id, 201, {{"X-Answer", "42"}, {"Transfer-Encoding", "chunked"}}, true, "Made"));
  agent.send_binary("pong!");
  sender.join();
  CHECK(answer.status == 201);
  CHECK(answer.headers["x-answer"] == "42");
  CHECK(answer.headers.count("transfer-encoding") == 0);
  CHECK(answer.headers["content-length"] == "5");
  CHECK(answer.body == "pong!");
  CHECK(relay.gauge("clusterconnect_relay_http_requests_total{outcome=\"responded\"}") == 1);

  // A HEAD: the listener's length passes, no body does.
  std::thread head([&] { answer = send(relay, "HEAD", "/" + path_a, relay.token("connect", "a-connect", path_a)); });
  request = next_message<rv::RequestMessage>(agent);
  CHECK(request.method == "HEAD");
  CHECK_FALSE(request.body);
  agent.send_text(response_json(request.id, 200, {{"Content-Length", "1234"}}, false));
  head.join();
  CHECK(answer.status == 200);
  CHECK(answer.headers["content-length"] == "1234");
  CHECK(answer.body.empty());
}

TEST_CASE("HTTP mode: what does not fit a control message goes over a rendezvous WebSocket", "[relay][hc][http]") {
  auto relay = same_named_clusters();
  ControlClient agent(relay, path_a, relay.token("listen", "a-listen", path_a));
  const std::string token = relay.token("connect", "a-connect", path_a);

  // A 200 KiB request is only announced; the listener dials its address and
  // gets the request there, and answers there.
  const std::string upload = pattern(200 * 1024, 1);
  Answer answer;
  std::thread sender([&] { answer = send(relay, "PUT", "/" + path_a + "/blob", token, upload); });
  auto announced = next_message<rv::RequestMessage>(agent);
  CHECK(announced.method.empty());
  RawWs rendezvous(relay);
  REQUIRE_FALSE(rendezvous.upgrade(relay.host(), target_of(announced.address), {}));
  auto request = read_message<rv::RequestMessage>(rendezvous);
  CHECK(request.id == announced.id);
  CHECK(request.method == "PUT");
  CHECK(request.body);
  auto body = rendezvous.read();
  REQUIRE(body);
  CHECK_FALSE(body->first);
  CHECK(body->second == upload);
  const std::string download = pattern(300 * 1024, 2);
  rendezvous.write(true, response_json(request.id, 200, nlohmann::json::object(), true));
  rendezvous.write(false, download);
  sender.join();
  CHECK(answer.status == 200);
  CHECK(answer.body == download);
  // The relay closes the rendezvous once the response has passed.
  CHECK_FALSE(rendezvous.read());
  CHECK(rendezvous.reason().code == 1000);

  // A small request on the control channel whose response is large: the
  // listener answers on a rendezvous at the request's address.
  std::thread small([&] { answer = send(relay, "GET", "/" + path_a + "/report", token); });
  request = next_message<rv::RequestMessage>(agent);
  RawWs reply(relay);
  REQUIRE_FALSE(reply.upgrade(relay.host(), target_of(request.address), {}));
  reply.write(true, response_json(request.id, 200, {{"Content-Type", "text/csv"}}, true));
  reply.write(false, download);
  small.join();
  CHECK(answer.status == 200);
  CHECK(answer.headers["content-type"] == "text/csv");
  CHECK(answer.body == download);
  // Its id is spent.
  RawWs again(relay);
  CHECK(again.upgrade(relay.host(), target_of(request.address), {}) == websocket::error::upgrade_declined);
  CHECK(again.response.result_int() == 404);
  CHECK(relay.gauge("clusterconnect_relay_http_rendezvous_total") == 2);
}

TEST_CASE("HTTP mode: a sender that is not allowed, or has no listener, is refused before anything is sent",
          "[relay][hc][http][security]") {
  auto relay = same_named_clusters({{"max_tunnels_per_cluster", 2}, {"max_http_body", 4096}});
  ControlClient agent(relay, path_a, relay.token("listen", "a-listen", path_a));
  CHECK(send(relay, "GET", "/" + path_a, std::nullopt).status == 401);
  // team-b's connect key does not sign for team-a's path; a listen key is not a send key.
  CHECK(send(relay, "GET", "/" + path_a, relay.token("connect", "b-connect", path_a)).status == 401);
  CHECK(send(relay, "GET", "/" + path_a, relay.token("listen", "a-listen", path_a)).status == 403);
  auto none = send(relay, "GET", "/" + path_b, relay.token("connect", "b-connect", path_b));
  CHECK(none.status == 404);
  CHECK_THAT(none.body, Catch::Contains("no listener"));
  auto large = send(relay, "POST", "/" + path_a, relay.token("connect", "a-connect", path_a), pattern(5000, 3));
  CHECK(large.status == 413);
  CHECK_THAT(large.body, Catch::Contains("4 KiB"));
  // The listener saw none of them: the next message it gets is this request.
  std::thread sender([&] { send(relay, "DELETE", "/" + path_a + "/x", relay.token("connect", "a-connect", path_a)); });
  auto request = next_message<rv::RequestMessage>(agent);
  CHECK(request.method == "DELETE");
  agent.send_text(response_json(request.id, 204, nlohmann::json::object(), false));
  sender.join();
}

TEST_CASE("HTTP mode: a listener's bad or missing response is answered 502 or 504, and never reaches another sender",
          "[relay][hc][http][security]") {
  auto relay = same_named_clusters({{"max_tunnels_per_cluster", 2}, {"http_response_timeout_ms", 1500}});
  ControlClient agent(relay, path_a, relay.token("listen", "a-listen", path_a));
  const std::string token = relay.token("connect", "a-connect", path_a);
  auto exchange = [&](auto&& respond) {
    Answer answer;
    std::thread sender([&] { answer = send(relay, "GET", "/" + path_a, token); });
    respond(next_message<rv::RequestMessage>(agent));
    sender.join();
    return answer;
  };

  // A header that would split the response.
  auto split = exchange([&](const rv::RequestMessage& r) {
    agent.send_text(response_json(r.id, 200, {{"X-Evil", "a\r\nSet-Cookie: owned=1"}}, false));
  });
  CHECK(split.status == 502);
  CHECK(split.headers.count("set-cookie") == 0);
  CHECK_THAT(split.body, Catch::Contains("malformed header"));

  // No response: 504 when the relay's time for it has passed.
  auto silent = exchange([](const rv::RequestMessage&) {});
  CHECK(silent.status == 504);
  CHECK_THAT(silent.body, Catch::Contains("did not respond"));

  // Another cluster's listener cannot answer team-a's sender, even with its id.
  ControlClient other(relay, path_b, relay.token("listen", "b-listen", path_b));
  auto crossed = exchange([&](const rv::RequestMessage& r) {
    other.send_text(response_json(r.id, 200, {{"X-From", "team-b"}}, false));
    agent.send_text(response_json(r.id, 200, {{"X-From", "team-a"}}, false));
  });
  CHECK(crossed.status == 200);
  CHECK(crossed.headers["x-from"] == "team-a");

  // A malformed response ends the listener's channel; its sender learns at once.
  auto broken = exchange([&](const rv::RequestMessage& r) {
    agent.send_text(R"({"response":{"requestId":")" + r.id + R"(","statusCode":"nope"}})");
    CHECK_FALSE(agent.next());
    CHECK(agent.close_code() == 1007);
  });
  CHECK(broken.status == 502);
  CHECK_THAT(broken.body, Catch::Contains("went away"));
}

TEST_CASE("Hybrid Connections paths: a sender may add segments after the path, a listener names it exactly",
          "[relay][hc]") {
  auto relay = same_named_clusters();
  ControlClient agent(relay, path_a, relay.token("listen", "a-listen", path_a));
  RawWs sender(relay);
  beast::error_code sender_ec = asio::error::would_block;
  std::thread connecting([&] {
    sender_ec = sender.upgrade(relay.host(), "/$hc/" + path_a + "/tenant/7?sb-hc-action=connect",
                               {{"ServiceBusAuthorization", relay.token("connect", "a-connect", path_a)}});
  });
  auto accept = next_accept(agent);
  // The accept names the hybrid connection itself.
  CHECK_THAT(accept.address, Catch::StartsWith("wss://" + relay.host() + "/$hc/" + path_a + "?sb-hc-action=accept"));
  RawWs listener(relay);
  REQUIRE_FALSE(listener.upgrade(relay.host(), target_of(accept.address), {}));
  connecting.join();
  CHECK_FALSE(sender_ec);

  RawWs suffixed(relay);
  CHECK(suffixed.upgrade(relay.host(), "/$hc/" + path_a + "/tenant/7?sb-hc-action=listen",
                         {{"ServiceBusAuthorization", relay.token("listen", "a-listen", path_a)}}) ==
        websocket::error::upgrade_declined);
  CHECK(suffixed.response.result_int() == 404);
}
