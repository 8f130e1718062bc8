// Rendezvous through a real relay process: an agent's control channel (a
// WebSocket without the tunnel subprotocol) is announced a connect; in the tls
// form both legs meet at the rendezvous port and run mutual TLS end to end, in
// the ws form the relay holds a Hybrid Connections sender's upgrade until the
// listener accepts and then passes messages on; and what the relay refuses.

#include <catch2/catch.hpp>

#include <future>

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/ssl.hpp>
#include <boost/beast/websocket.hpp>
#include <boost/beast/websocket/ssl.hpp>

#include "clusterconnect/ascii.hpp"
#include "hc_clients.hpp"
#include "relay_fixture.hpp"
#include "rendezvous/client_hello.hpp"
#include "rendezvous/control_message.hpp"
#include "rendezvous_legs.hpp"

using namespace clusterconnect;
using namespace clusterconnect::test;
using namespace std::chrono_literals;
namespace beast = boost::beast;
namespace websocket = beast::websocket;
namespace rv = clusterconnect::tunnel::rendezvous;

namespace {

// Two clusters called "prod" and a rendezvous port.
RelayProcess rendezvous_relay() {
  return same_named_clusters(nlohmann::json::object(), {"--rendezvous-listen", "127.0.0.1:0"});
}

std::string listeners_metric(const RelayProcess& relay, const std::string& path) {
  const auto metrics = run("curl -sS --max-time 10 " + quote(relay.metrics_url())).output;
  const std::string key = "clusterconnect_relay_listeners{hybrid_connection=\"" + path + "\"} ";
  const auto at = metrics.find(key);
  return at == std::string::npos ? "" : metrics.substr(at + key.size(), metrics.find('\n', at) - at - key.size());
}

// POST connect with a connect token: the relay's answer (status line and body).
CommandResult connect(const RelayProcess& relay, const std::string& path, const std::string& token) {
  return run("curl -sS --max-time 20 -w '\\n%{http_code}' --cacert " + quote(relay.ca_file()) + " -X POST -H " +
             quote("ServiceBusAuthorization: " + token) + " " +
             quote("https://" + relay.host() + "/$hc/" + path + "?sb-hc-action=connect"));
}

std::pair<unsigned, nlohmann::json> connect_json(const RelayProcess& relay, const std::string& path, const std::string& token) {
  auto r = connect(relay, path, token);
  const auto nl = r.output.rfind('\n');
  REQUIRE(nl != std::string::npos);
  const unsigned status = static_cast<unsigned>(std::stoul(r.output.substr(nl + 1)));
  return {status, nlohmann::json::parse(r.output.substr(0, nl), nullptr, false)};
}

}  // namespace

TEST_CASE("rendezvous through the relay: the connect is announced to the cluster's agent and the legs run TLS end to end",
          "[relay][rendezvous]") {
  auto relay = rendezvous_relay();
  REQUIRE(relay.rendezvous_port() != 0);
  ControlClient agent_a(relay, path_a, relay.token("listen", "a-listen", path_a));
  ControlClient agent_b(relay, path_b, relay.token("listen", "b-listen", path_b));
  REQUIRE(wait_until([&] { return listeners_metric(relay, path_a) == "1" && listeners_metric(relay, path_b) == "1"; }, 20s));

  auto [status, body] = connect_json(relay, path_a, relay.token("connect", "a-connect", path_a));
  REQUIRE(status == 200);
  const std::string ticket = body["rendezvous"]["ticket"].get<std::string>();
  const std::string address = body["rendezvous"]["address"].get<std::string>();
  CHECK(rv::is_ticket(ticket));
  CHECK(address == "tls://127.0.0.1:" + std::to_string(relay.rendezvous_port()));
  CHECK(body["rendezvous"]["expiresInSeconds"] == 30);

  // Only team-a's agent hears of it, with the same ticket and address.
  auto text = agent_a.next();
  REQUIRE(text);
  auto m = rv::parse_control_message(*text);
  REQUIRE(m.state == rv::ControlParse::State::ok);
  const auto& accept = std::get<rv::AcceptMessage>(m.message);
  CHECK(accept.id == ticket);
  CHECK(accept.address == address);
  REQUIRE(accept.remote_endpoint);
  CHECK(accept.remote_endpoint->address == "127.0.0.1");

  const Identity agent_id("agent"), proxy_id("proxy");
  const auto data = payload(1 << 20);
  auto proxy = proxy_leg(relay.rendezvous_port(), ticket, proxy_id, agent_id, data);
  auto agent = agent_leg(relay.rendezvous_port(), rv::ticket_server_name(ticket, "127.0.0.1"), agent_id, proxy_id);
  auto p = proxy.get();
  auto a = agent.get();
  CHECK(p.answer == "CLUSTERCONNECT-RENDEZVOUS/1 200 paired\r\n");
  REQUIRE(p.handshake);
  REQUIRE(a.handshake);
  CHECK(p.agent_fingerprint == agent_id.fingerprint());
  CHECK(p.greeting == "hello from the agent");
  CHECK(a.received == data);

  // team-b's connect goes to team-b's agent, not team-a's.
  auto [status_b, body_b] = connect_json(relay, path_b, relay.token("connect", "b-connect", path_b));
  REQUIRE(status_b == 200);
  auto text_b = agent_b.next();
  REQUIRE(text_b);
  CHECK_THAT(*text_b, Catch::Contains(body_b["rendezvous"]["ticket"].get<std::string>()));
  CHECK(wait_until([&] {
    const auto metrics = run("curl -sS --max-time 10 " + quote(relay.metrics_url())).output;
    return metrics.find("clusterconnect_relay_rendezvous_total{outcome=\"paired\"} 1") != std::string::npos;
  }, 20s));
}

TEST_CASE("a connect with no agent listening is refused at once, and a connect token cannot listen", "[relay][rendezvous]") {
  auto relay = rendezvous_relay();
  auto [status, body] = connect_json(relay, path_a, relay.token("connect", "a-connect", path_a));
  CHECK(status == 404);
  CHECK_THAT(body.dump(), Catch::Contains("no agent connected for cluster prod") && Catch::Contains("team-a"));
  // A listen key does not connect, a connect key does not listen, and one
  // cluster's key does not open the other's.
  CHECK_THAT(connect(relay, path_a, relay.token("listen", "a-listen", path_a)).output, Catch::EndsWith("403"));
  CHECK_THAT(connect(relay, path_a, relay.token("connect", "b-connect", path_a)).output, Catch::EndsWith("401"));
  CHECK_THROWS(ControlClient(relay, path_a, relay.token("connect", "a-connect", path_a)));
}

TEST_CASE("a control channel carries JSON text only and ends when its token expires unless renewed", "[relay][rendezvous]") {
  auto relay = rendezvous_relay();
  SECTION("a binary frame closes it with 1003") {
    ControlClient agent(relay, path_a, relay.token("listen", "a-listen", path_a));
    agent.send_binary(std::string("\x00\x01", 2));
    CHECK_FALSE(agent.next());
    CHECK(agent.close_code() == 1003);
  }
  SECTION("a message that is not JSON closes it with 1007") {
    ControlClient agent(relay, path_a, relay.token("listen", "a-listen", path_a));
    agent.send_text("{nope");
    CHECK_FALSE(agent.next());
    CHECK(agent.close_code() == 1007);
  }
  SECTION("an expired token closes it with 1008") {
    ControlClient agent(relay, path_a, relay.token("listen", "a-listen", path_a, 2s));
    CHECK_FALSE(agent.next());
    CHECK(agent.close_code() == 1008);
    CHECK(agent.close_reason() == "token expired");
  }
  SECTION("a renewed token keeps it open past the first one's expiry") {
    const auto first_expiry = std::chrono::system_clock::now() + 2s;
    ControlClient agent(relay, path_a, relay.token("listen", "a-listen", path_a, 2s));
    agent.send_text(rv::to_json(rv::RenewTokenMessage{relay.token("listen", "a-listen", path_a, 1h)}));
    // A forged renewal is refused and changes nothing.
    agent.send_text(rv::to_json(rv::RenewTokenMessage{relay.token("listen", "wrong-secret", path_a, 1h)}));
    REQUIRE(wait_until([&] { return std::chrono::system_clock::now() > first_expiry + 1s; }, 10s));
    auto [status, body] = connect_json(relay, path_a, relay.token("connect", "a-connect", path_a));
    CHECK(status == 200);
    auto text = agent.next();
    REQUIRE(text);
    CHECK_THAT(*text, Catch::Contains("\"accept\""));
    CHECK_THAT(relay.log(), Catch::Contains("token renewal refused"));
  }
}

TEST_CASE("ws form: a sender's upgrade waits for the listener's accept, then messages pass one to one",
          "[relay][rendezvous][ws]") {
  auto relay = rendezvous_relay();
  ControlClient agent(relay, path_a, relay.token("listen", "a-listen", path_a));
  const std::string connect_target = "/$hc/" + path_a + "?sb-hc-action=connect";
  const std::string token = relay.token("connect", "a-connect", path_a);

  RawWs sender(relay);
  beast::error_code sender_ec = asio::error::would_block;
  std::thread connecting([&] {
    sender_ec = sender.upgrade(relay.host(), connect_target,
                               {{"ServiceBusAuthorization", token}, {"Sec-WebSocket-Protocol", "chat, echo"}, {"X-Trace", "42"}});
  });
  auto accept = next_accept(agent);
  CHECK_THAT(accept.address, Catch::StartsWith("wss://" + relay.host() + "/$hc/" + path_a + "?sb-hc-action=accept&sb-hc-id="));
  CHECK(accept.id.size() >= 20);
  // The sender's headers reach the listener, its credentials do not.
  std::map<std::string, std::string> headers;
  for (const auto& [k, v] : accept.connect_headers) headers[ascii_lowered(k)] = v;
  CHECK(headers.count("sec-websocket-key") == 1);
  CHECK(headers["x-trace"] == "42");
  CHECK(headers["sec-websocket-protocol"] == "chat, echo");
  CHECK(headers.count("servicebusauthorization") == 0);
  REQUIRE(accept.remote_endpoint);
  CHECK(accept.remote_endpoint->address == "127.0.0.1");

  RawWs listener(relay);
  REQUIRE_FALSE(listener.upgrade(relay.host(), target_of(accept.address), {{"Sec-WebSocket-Protocol", "echo"}}));
  // The listener's choice goes back to it (Microsoft's SDK offers it on its
  // own upgrade and requires it) and on to the sender.
  CHECK(listener.response[beast::http::field::sec_websocket_protocol] == "echo");
  connecting.join();
  REQUIRE_FALSE(sender_ec);
  CHECK(sender.response[beast::http::field::sec_websocket_protocol] == "echo");

  sender.write(true, "hello");
  auto got = listener.read();
  REQUIRE(got);
  CHECK(got->first);
  CHECK(got->second == "hello");
  std::string big(1024 * 1024, '\0');
  for (std::size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>(i * 31 % 251);
  listener.write(false, big);
  got = sender.read();
  REQUIRE(got);
  CHECK_FALSE(got->first);
  CHECK(got->second == big);
  listener.write(false, "");
  got = sender.read();
  REQUIRE(got);
  CHECK(got->second.empty());

  // The id is spent: a second accept with it finds nothing.
  RawWs again(relay);
  CHECK(again.upgrade(relay.host(), target_of(accept.address), {}) == websocket::error::upgrade_declined);
  CHECK(again.response.result_int() == 404);

  // A close passes through with its code and reason.
  sender.close(4000, "done here");
  CHECK_FALSE(listener.read());
  CHECK(listener.reason().code == 4000);
  CHECK(std::string(listener.reason().reason.c_str()) == "done here");
  CHECK(relay.gauge("clusterconnect_relay_ws_rendezvous_total{outcome=\"paired\"}") == 1);
}

TEST_CASE("ws form: a rendezvous announced before the relay drains pairs when its listener accepts, and ends drained",
          "[relay][rendezvous][ws][drain]") {
  auto relay = rendezvous_relay();
  ControlClient agent(relay, path_a, relay.token("listen", "a-listen", path_a));
  const std::string token = relay.token("connect", "a-connect", path_a);
  RawWs sender(relay);
  auto connecting = park_sender(sender, relay, path_a, token);
  const auto accept = next_accept(agent);
  // The relay drains before the listener's accept arrives.
  auto stopped = std::async(std::launch::async, [&] { return relay.stop(SIGTERM, std::chrono::seconds(60)); });
  const bool told = wait_until([&] { return relay.log().find("drain: notice on") != std::string::npos; }, 20s);
  INFO(relay.log());
  REQUIRE(told);
  // The control channel is closed (this listener answers the close)…
  CHECK_FALSE(agent.next());
  CHECK(agent.close_code() == 1001);
  // …and a new connect is refused…
  CHECK(connect_json(relay, path_a, token).first == 503);
  // …while the accept still reaches its sender: the pair forms and carries.
  RawWs listener(relay);
  pair_and_pass(listener, relay, accept, connecting, sender, "after the drain began");
  // Its end is the pair's own: drained, not cut, and the relay exits long
  // before its drain timeout.
  sender.close(1000, "done");
  CHECK_FALSE(listener.read());
  CHECK(stopped.get() == 0);
  const auto log = relay.log();
  INFO(log);
  CHECK(log.find("drain: 1 rendezvous ended by themselves, 0 cut") != std::string::npos);
  CHECK(log.find("was not accepted in time") == std::string::npos);
}

namespace {

// Parks `sender` on team-a's path and has the listener reject it by
// requesting the accept address with `params` appended: the status the
// rejecting request got, and how the sender's upgrade ended.
std::pair<std::string, beast::error_code> reject_sender(const RelayProcess& relay, ControlClient& agent, RawWs& sender,
                                                        const std::string& params) {
  beast::error_code sender_ec;
  std::thread connecting([&] {
    sender_ec = sender.upgrade(relay.host(), "/$hc/" + path_a + "?sb-hc-action=connect",
                               {{"ServiceBusAuthorization", relay.token("connect", "a-connect", path_a)}});
  });
  auto accept = next_accept(agent);
  auto rejected = run("curl -sS --max-time 20 -o /dev/null -w '%{http_code}' --cacert " + quote(relay.ca_file()) + " " +
                      quote("https" + accept.address.substr(3) + params));
  connecting.join();
  return {rejected.output, sender_ec};
}

}  // namespace

TEST_CASE("ws form: a listener's rejection reaches the sender with its status", "[relay][rendezvous][ws]") {
  auto relay = rendezvous_relay();
  ControlClient agent(relay, path_a, relay.token("listen", "a-listen", path_a));
  RawWs sender(relay);
  // As Microsoft's SDKs send it: no sb-hc- prefix.
  auto [rejected, sender_ec] = reject_sender(relay, agent, sender, "&statusCode=403&statusDescription=not%20today");
  CHECK(rejected == "410");
  CHECK(sender_ec == websocket::error::upgrade_declined);
  CHECK(sender.response.result_int() == 403);
  CHECK_THAT(sender.response.body(), Catch::Contains("not today"));
  // The description is the status line's reason phrase too (hyco-ws senders
  // see only the status line).
  CHECK(std::string(sender.response.reason()) == "not today");
  CHECK(relay.gauge("clusterconnect_relay_ws_rendezvous_total{outcome=\"rejected\"}") == 1);
  {
    // A description that would break the status line is cut to what fits.
    RawWs second(relay);
    auto [r, second_ec] =
        reject_sender(relay, agent, second, "&sb-hc-statusCode=451&sb-hc-statusDescription=%20bad%0D%0AX-Injected:%201%20");
    CHECK(r == "410");
    CHECK(second_ec == websocket::error::upgrade_declined);
    CHECK(second.response.result_int() == 451);
    CHECK(std::string(second.response.reason()) == "badX-Injected: 1");
    CHECK(second.response.count("X-Injected") == 0);
  }
  // A sender whose cluster has no listener is refused at once.
  RawWs lonely(relay);
  CHECK(lonely.upgrade(relay.host(), "/$hc/" + path_b + "?sb-hc-action=connect",
                       {{"ServiceBusAuthorization", relay.token("connect", "b-connect", path_b)}}) ==
        websocket::error::upgrade_declined);
  CHECK(lonely.response.result_int() == 404);
}

TEST_CASE("a listener refused again and again is answered later each time and a good one is not held",
          "[relay][rendezvous]") {
  // Microsoft's SDKs reconnect a refused listener at once (hyco-ws twice per
  // failure): the relay holds each further refusal from that address longer.
  auto relay = rendezvous_relay();
  const auto forged = relay.token("listen", "wrong-secret", path_a);
  auto refused = [&] {
    RawWs ws(relay);
    const auto start = std::chrono::steady_clock::now();
    CHECK(ws.upgrade(relay.host(), "/$hc/" + path_a + "?sb-hc-action=listen", {{"ServiceBusAuthorization", forged}}) ==
          websocket::error::upgrade_declined);
    CHECK(ws.response.result_int() == 401);
    return std::chrono::steady_clock::now() - start;
  };
  refused();
  CHECK(refused() >= 250ms);
  CHECK(refused() >= 500ms);
  // A listener whose token is good is accepted from the same address.
  ControlClient agent(relay, path_a, relay.token("listen", "a-listen", path_a));
  auto [status, body] = connect_json(relay, path_a, relay.token("connect", "a-connect", path_a));
  CHECK(status == 200);
  auto text = agent.next();
  REQUIRE(text);
  CHECK_THAT(*text, Catch::Contains("\"accept\""));
}
