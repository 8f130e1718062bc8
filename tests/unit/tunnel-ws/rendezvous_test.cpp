// The rendezvous pieces: the ClientHello peeker (fed real ClientHellos from
// OpenSSL, then cut, re-fragmented and tampered with), tickets, the proxy
// leg's preamble and the relay's answer, and the control-channel messages.

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <memory>
#include <set>
#include <vector>

#include <openssl/bio.h>
#include <openssl/ssl.h>

#include "rendezvous/client_hello.hpp"
#include "rendezvous/control_message.hpp"
#include "rendezvous/preamble.hpp"

using namespace clusterconnect::tunnel::rendezvous;
using Bytes = std::vector<std::uint8_t>;

namespace {

// What an OpenSSL client sends first: its ClientHello, in TLS records.
Bytes real_client_hello(const char* server_name, int max_version = TLS1_3_VERSION) {
  std::unique_ptr<SSL_CTX, decltype(&SSL_CTX_free)> ctx(SSL_CTX_new(TLS_client_method()), SSL_CTX_free);
  REQUIRE(ctx);
  REQUIRE(SSL_CTX_set_max_proto_version(ctx.get(), max_version) == 1);
  std::unique_ptr<SSL, decltype(&SSL_free)> ssl(SSL_new(ctx.get()), SSL_free);
  BIO* in = BIO_new(BIO_s_mem());
  BIO* out = BIO_new(BIO_s_mem());
  SSL_set_bio(ssl.get(), in, out);  // owned by the SSL from here
  if (server_name) REQUIRE(SSL_set_tlsext_host_name(ssl.get(), server_name) == 1);
  SSL_set_connect_state(ssl.get());
  REQUIRE(SSL_do_handshake(ssl.get()) == -1);
  REQUIRE(SSL_get_error(ssl.get(), -1) == SSL_ERROR_WANT_READ);
  char* data = nullptr;
  const long n = BIO_get_mem_data(out, &data);
  REQUIRE(n > 0);
  return Bytes(data, data + n);
}

// The handshake bytes of a run of TLS records.
Bytes handshake_layer(const Bytes& records) {
  Bytes hs;
  for (std::size_t at = 0; at + 5 <= records.size();) {
    const std::size_t len = std::size_t{records[at + 3]} << 8 | records[at + 4];
    hs.insert(hs.end(), records.begin() + static_cast<long>(at + 5), records.begin() + static_cast<long>(at + 5 + len));
    at += 5 + len;
  }
  return hs;
}

// The same handshake bytes cut into records of at most `size` bytes.
Bytes in_records(const Bytes& hs, std::size_t size) {
  Bytes out;
  for (std::size_t at = 0; at < hs.size(); at += size) {
    const std::size_t n = std::min(size, hs.size() - at);
    out.insert(out.end(), {22, 3, 1, static_cast<std::uint8_t>(n >> 8), static_cast<std::uint8_t>(n)});
    out.insert(out.end(), hs.begin() + static_cast<long>(at), hs.begin() + static_cast<long>(at + n));
  }
  return out;
}

void put16(Bytes& b, std::size_t v) {
  b.push_back(static_cast<std::uint8_t>(v >> 8));
  b.push_back(static_cast<std::uint8_t>(v));
}

struct Extension {
  std::uint16_t type;
  Bytes data;
};

Extension server_name_ext(const std::vector<std::string>& hosts) {
  Bytes list;
  for (const auto& h : hosts) {
    list.push_back(0);
    put16(list, h.size());
    list.insert(list.end(), h.begin(), h.end());
  }
  Extension e{0, {}};
  put16(e.data, list.size());
  e.data.insert(e.data.end(), list.begin(), list.end());
  return e;
}

// A minimal TLS 1.2-shaped ClientHello, built by hand for the shapes no
// library would send; in one record.
Bytes synthetic_client_hello(const std::vector<Extension>& extensions, bool with_extensions_block = true) {
  Bytes body{3, 3};
  body.insert(body.end(), 32, 0xab);  // random
  body.push_back(0);                  // session id
  put16(body, 2);
  body.insert(body.end(), {0x13, 0x01});  // one cipher suite
  body.insert(body.end(), {1, 0});        // null compression
  if (with_extensions_block) {
    Bytes ext;
    for (const auto& e : extensions) {
      put16(ext, e.type);
      put16(ext, e.data.size());
      ext.insert(ext.end(), e.data.begin(), e.data.end());
    }
    put16(body, ext.size());
    body.insert(body.end(), ext.begin(), ext.end());
  }
  Bytes hs{1, 0, static_cast<std::uint8_t>(body.size() >> 8), static_cast<std::uint8_t>(body.size())};
  hs.insert(hs.end(), body.begin(), body.end());
  return in_records(hs, 16384);
}

Bytes text(std::string_view s) { return Bytes(s.begin(), s.end()); }

HelloPeek peek(const Bytes& b) { return peek_client_hello(b); }

}  // namespace

TEST_CASE("a real ClientHello yields its server name, and no prefix of it does", "[rendezvous]") {
  for (int version : {TLS1_3_VERSION, TLS1_2_VERSION}) {
    INFO("max version " << version);
    const auto hello = real_client_hello("relay.example.net", version);
    auto p = peek(hello);
    REQUIRE(p.state == HelloPeek::State::complete);
    CHECK(p.server_name == "relay.example.net");
    for (std::size_t n = 0; n < hello.size(); ++n) {
      auto part = peek(Bytes(hello.begin(), hello.begin() + static_cast<long>(n)));
      INFO("first " << n << " bytes");
      REQUIRE(part.state == HelloPeek::State::need_more);
    }
    // What follows the ClientHello does not change the answer.
    auto more = hello;
    more.insert(more.end(), {23, 3, 3, 0, 1, 0});
    CHECK(peek(more).server_name == "relay.example.net");
  }
}

TEST_CASE("a ClientHello split over several TLS records is reassembled", "[rendezvous]") {
  const auto hs = handshake_layer(real_client_hello("abc.relay.example.net"));
  for (std::size_t size : {hs.size() / 2 + 1, std::size_t{100}, std::size_t{37}}) {
    INFO("records of " << size << " bytes");
    const auto records = in_records(hs, size);
    auto p = peek(records);
    REQUIRE(p.state == HelloPeek::State::complete);
    CHECK(p.server_name == "abc.relay.example.net");
    CHECK(peek(Bytes(records.begin(), records.end() - 1)).state == HelloPeek::State::need_more);
  }
  auto p = peek(in_records(hs, 1));
  REQUIRE(p.state == HelloPeek::State::invalid);
  CHECK_THAT(p.error, Catch::Contains("more than 32 records"));
}

TEST_CASE("a ClientHello without a server name is complete, with none", "[rendezvous]") {
  auto p = peek(real_client_hello(nullptr));
  REQUIRE(p.state == HelloPeek::State::complete);
  CHECK(p.server_name.empty());
  auto bare = peek(synthetic_client_hello({}, false));
  REQUIRE(bare.state == HelloPeek::State::complete);
  CHECK(bare.server_name.empty());
}

TEST_CASE("what is not a ClientHello is refused from its first bytes", "[rendezvous]") {
  struct Case {
    Bytes bytes;
    std::string why;
  };
  const std::vector<Case> cases{
      {text("G"), "not a TLS handshake"},                   // plain HTTP, one byte is enough
      {{0x80, 0x2e, 0x01}, "not a TLS handshake"},          // SSLv2-compatible hello
      {{21, 3, 3, 0, 2, 2, 40}, "not a TLS handshake"},     // an alert
      {{22, 9}, "not a TLS record"},                        // wrong major version
      {{22, 3, 1, 0, 0}, "empty TLS handshake record"},     // zero-length record
      {{22, 3, 1, 0x40, 0x01}, "longer than 16 KiB"},       // oversized record
      {{22, 3, 1, 0, 4, 2, 0, 0, 0}, "not a ClientHello"},  // a ServerHello
      {{22, 3, 1, 0, 4, 1, 0, 0x40, 0x01}, "the limit is 16384"},
  };
  for (const auto& c : cases) {
    INFO(c.why);
    auto p = peek(c.bytes);
    REQUIRE(p.state == HelloPeek::State::invalid);
    CHECK_THAT(p.error, Catch::Contains(c.why));
  }
  // A second record that is not a handshake, before the hello is complete.
  auto hs = handshake_layer(real_client_hello("x.example"));
  auto records = in_records(Bytes(hs.begin(), hs.begin() + 50), 50);
  records.insert(records.end(), {23, 3, 3, 0, 1, 0});
  auto p = peek(records);
  REQUIRE(p.state == HelloPeek::State::invalid);
  CHECK_THAT(p.error, Catch::Contains("non-handshake TLS record"));
}

TEST_CASE("a malformed ClientHello is refused with what was wrong", "[rendezvous]") {
  auto p = peek(synthetic_client_hello({server_name_ext({"a.example"}), server_name_ext({"b.example"})}));
  REQUIRE(p.state == HelloPeek::State::invalid);
  CHECK_THAT(p.error, Catch::Contains("repeats extension 0"));

  p = peek(synthetic_client_hello({server_name_ext({"a.example", "b.example"})}));
  REQUIRE(p.state == HelloPeek::State::invalid);
  CHECK_THAT(p.error, Catch::Contains("more than one host"));

  for (const auto& bad :
       std::vector<std::string>{"a b.example", std::string("a\0b.example", 11), "a.example\n", std::string(256, 'a'), ""}) {
    p = peek(synthetic_client_hello({server_name_ext({bad})}));
    REQUIRE(p.state == HelloPeek::State::invalid);
    CHECK_THAT(p.error, Catch::Contains("not a host name"));
  }

  // Every length field one too long or one too short: refused, never read past.
  const auto good = synthetic_client_hello({server_name_ext({"a.example"}), Extension{0xff01, {0}}});
  REQUIRE(peek(good).state == HelloPeek::State::complete);
  std::set<std::string> errors;
  for (std::size_t at = 5 + 4; at + 1 < good.size(); ++at) {
    for (int delta : {-1, 1}) {
      auto bad = good;
      bad[at] = static_cast<std::uint8_t>(bad[at] + delta);
      auto r = peek(bad);
      if (r.state == HelloPeek::State::invalid) errors.insert(r.error);
    }
  }
  CHECK(errors.count("malformed ClientHello extensions") == 1);
  CHECK(errors.count("malformed server_name extension") == 1);
  CHECK(errors.count("malformed ClientHello session id") == 1);
}

TEST_CASE("tickets are random, and only this relay's names carry one", "[rendezvous]") {
  const auto a = make_ticket(), b = make_ticket();
  CHECK(is_ticket(a));
  CHECK(a.size() == 32);
  CHECK(a != b);
  CHECK(a.find_first_not_of("0123456789abcdef") == std::string::npos);

  const auto name = ticket_server_name(a, "relay.example.net");
  CHECK(name == a + ".relay.example.net");
  CHECK(ticket_from_server_name(name, "relay.example.net") == a);
  CHECK(ticket_from_server_name(name + ".", "RELAY.example.NET") == a);
  std::string upper = a;
  for (auto& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  CHECK(ticket_from_server_name(upper + ".relay.example.net", "relay.example.net") == a);

  CHECK_FALSE(ticket_from_server_name(name, "other.example.net"));
  CHECK_FALSE(ticket_from_server_name(name, "example.net"));  // a suffix is not the host
  CHECK_FALSE(ticket_from_server_name("relay.example.net", "example.net"));
  CHECK_FALSE(ticket_from_server_name(a.substr(1) + ".relay.example.net", "relay.example.net"));
  CHECK_FALSE(ticket_from_server_name(a.substr(1) + "g.relay.example.net", "relay.example.net"));
  CHECK_FALSE(ticket_from_server_name(a, ""));

  // The name an agent's TLS client would send survives the peeker.
  auto p = peek(real_client_hello(name.c_str()));
  REQUIRE(p.state == HelloPeek::State::complete);
  CHECK(ticket_from_server_name(p.server_name, "relay.example.net") == a);
}

TEST_CASE("the proxy's preamble names its ticket in one line", "[rendezvous]") {
  const auto t = make_ticket();
  const auto line = make_preamble(t);
  CHECK(line == "CLUSTERCONNECT-RENDEZVOUS/1 " + t + "\r\n");
  auto bytes = text(line);
  for (std::size_t n = 0; n < bytes.size(); ++n) {
    auto part = Bytes(bytes.begin(), bytes.begin() + static_cast<long>(n));
    INFO("first " << n << " bytes");
    REQUIRE(parse_preamble(part).state == LinePeek::State::need_more);
    REQUIRE(classify_leg(part) == (n < 27 ? Leg::undecided : Leg::proxy));
  }
  bytes.insert(bytes.end(), {22, 3, 1});  // what follows is the other leg's business
  auto p = parse_preamble(bytes);
  REQUIRE(p.state == LinePeek::State::complete);
  CHECK(p.ticket == t);
  CHECK(p.consumed == line.size());

  CHECK(classify_leg(real_client_hello("x.example")) == Leg::agent);
  CHECK(classify_leg(text("GET / HTTP/1.1\r\n")) == Leg::unknown);
  CHECK(classify_leg(text("CLUSTERCONNECT-RENDEZVOUZ")) == Leg::unknown);
  CHECK(classify_leg({}) == Leg::undecided);

  struct Case {
    std::string line, why;
  };
  const std::vector<Case> cases{
      {"CLUSTERCONNECT-RENDEZVOUS/1 " + t + "\n", "CRLF"},
      {"CLUSTERCONNECT-RENDEZVOUS/1 " + t + "\rX\r\n", "bare CR"},
      {"CLUSTERCONNECT-RENDEZVOUS/1 " + t + "\t\r\n", "control"},
      {"CLUSTERCONNECT-RENDEZVOUS/2 " + t + "\r\n", "not a rendezvous preamble"},
      {"CLUSTERCONNECT-RENDEZVOUS/1  " + t + "\r\n", "no valid ticket"},
      {"CLUSTERCONNECT-RENDEZVOUS/1 " + t.substr(2) + "\r\n", "no valid ticket"},
      {"CLUSTERCONNECT-RENDEZVOUS/1 " + std::string(300, 'a'), "longer than 256"},
  };
  for (const auto& c : cases) {
    INFO(c.why);
    auto r = parse_preamble(text(c.line));
    REQUIRE(r.state == LinePeek::State::invalid);
    CHECK_THAT(r.error, Catch::Contains(c.why));
  }
}

TEST_CASE("the relay's answer carries a status and a printable reason", "[rendezvous]") {
  auto ok = parse_reply(text(make_reply(200, "paired")));
  REQUIRE(ok.state == LinePeek::State::complete);
  CHECK(ok.status == 200);
  CHECK(ok.reason == "paired");

  auto refused = parse_reply(text(make_reply(504, std::string("no agent answered\r\nwithin 30 s\x01") + std::string(400, 'x'))));
  REQUIRE(refused.state == LinePeek::State::complete);
  CHECK(refused.status == 504);
  CHECK(refused.reason.rfind("no agent answered??within 30 s?xxx", 0) == 0);
  CHECK(refused.consumed == max_preamble_line);

  CHECK(parse_reply(text(make_reply(42, "odd"))).status == 500);
  CHECK(parse_reply(text("CLUSTERCONNECT-RENDEZVOUS/1 20\r\n")).state == LinePeek::State::invalid);
  CHECK(parse_reply(text("CLUSTERCONNECT-RENDEZVOUS/1 2000 x\r\n")).state == LinePeek::State::invalid);
  CHECK(parse_reply(text("HTTP/1.1 200 OK\r\n")).state == LinePeek::State::invalid);
  CHECK(parse_reply(text("CLUSTERCONNECT-RENDEZVOUS/1 200")).state == LinePeek::State::need_more);
}

TEST_CASE("control-channel messages in Hybrid Connections' shape", "[rendezvous]") {
  const std::string accept = R"({"accept":{"address":"wss://relay.example.net/$hc/clusters/s/g/n?sb-hc-action=accept&sb-hc-id=4cb5",)"
                             R"("id":"4cb5","connectHeaders":{"Host":"relay.example.net","User-Agent":"kubectl"},)"
                             R"("remoteEndpoint":{"address":"10.1.2.3","port":51234}}})";
  auto p = parse_control_message(accept);
  REQUIRE(p.state == ControlParse::State::ok);
  const auto& a = std::get<AcceptMessage>(p.message);
  CHECK(a.id == "4cb5");
  CHECK(a.address.rfind("wss://relay.example.net/$hc/", 0) == 0);
  CHECK(a.connect_headers.at("User-Agent") == "kubectl");
  REQUIRE(a.remote_endpoint);
  CHECK(a.remote_endpoint->port == 51234);
  // What we send parses back to the same message.
  auto again = parse_control_message(to_json(a));
  REQUIRE(again.state == ControlParse::State::ok);
  CHECK(std::get<AcceptMessage>(again.message).connect_headers == a.connect_headers);
  CHECK(std::get<AcceptMessage>(again.message).remote_endpoint->address == "10.1.2.3");

  // Optional members may be missing or null.
  auto minimal = parse_control_message(R"({"accept":{"address":"tls://relay:443","id":"t","connectHeaders":null}})");
  REQUIRE(minimal.state == ControlParse::State::ok);
  CHECK_FALSE(std::get<AcceptMessage>(minimal.message).remote_endpoint);

  auto renew = parse_control_message(to_json(RenewTokenMessage{"SharedAccessSignature sr=x&sig=y&se=1&skn=listen"}));
  REQUIRE(renew.state == ControlParse::State::ok);
  CHECK(std::get<RenewTokenMessage>(renew.message).token == "SharedAccessSignature sr=x&sig=y&se=1&skn=listen");

  auto other = parse_control_message(R"({"sessionInfo":{"id":"1"}})");
  CHECK(other.state == ControlParse::State::unknown_kind);
  CHECK(other.kind == "sessionInfo");
}

TEST_CASE("HTTP-mode requests and responses in Hybrid Connections' shape", "[rendezvous]") {
  // A request as the relay sends it, and as Microsoft's SDKs read it.
  RequestMessage r;
  r.address = "wss://relay.example.net/$hc/hc/echo?sb-hc-action=request&sb-hc-id=ab12";
  r.id = "ab12";
  r.target = "/hc/echo/sub?x=1";
  r.method = "POST";
  r.headers = {{"Content-Type", "text/plain"}, {"X-Trace", "1"}};
  r.remote_endpoint = RemoteEndpoint{"10.0.0.7", 40000};
  r.body = true;
  const auto j = nlohmann::json::parse(to_json(r));
  CHECK(j.at("request").at("requestTarget") == "/hc/echo/sub?x=1");
  CHECK(j.at("request").at("requestHeaders").at("X-Trace") == "1");
  CHECK(j.at("request").at("body") == true);
  auto back = parse_control_message(to_json(r));
  REQUIRE(back.state == ControlParse::State::ok);
  const auto& rb = std::get<RequestMessage>(back.message);
  CHECK(rb.method == "POST");
  CHECK(rb.headers == r.headers);
  CHECK(rb.remote_endpoint->port == 40000);

  // Announced only: address and id, nothing the listener would take as a request.
  RequestMessage announced;
  announced.address = r.address;
  announced.id = r.id;
  const auto ja = nlohmann::json::parse(to_json(announced));
  CHECK_FALSE(ja.at("request").contains("method"));
  CHECK_FALSE(ja.at("request").contains("requestTarget"));

  // Responses: statusCode as a number (hyco-https) or a string, headers
  // with array values joined, body flag.
  auto a = parse_control_message(
      R"({"response":{"requestId":"ab12","statusCode":201,"statusDescription":"Created","responseHeaders":{"x-a":"1","x-b":["2","3"]},"body":true}})");
  REQUIRE(a.state == ControlParse::State::ok);
  const auto& ra = std::get<ResponseMessage>(a.message);
  CHECK(ra.status == 201);
  CHECK(ra.description == "Created");
  CHECK(ra.headers.at("x-b") == "2, 3");
  CHECK(ra.body);
  auto b = parse_control_message(R"({"response":{"requestId":"ab12","statusCode":"404"}})");
  REQUIRE(b.state == ControlParse::State::ok);
  CHECK(std::get<ResponseMessage>(b.message).status == 404);
  CHECK_FALSE(std::get<ResponseMessage>(b.message).body);
  auto again = parse_control_message(to_json(ra));
  REQUIRE(again.state == ControlParse::State::ok);
  CHECK(std::get<ResponseMessage>(again.message).headers == ra.headers);
}

TEST_CASE("a malformed HTTP-mode response is refused with what was wrong", "[rendezvous]") {
  struct Case {
    std::string json, why;
  };
  const std::vector<Case> cases{
      {R"({"response":{"statusCode":200}})", "requestId"},
      {R"({"response":{"requestId":"1","statusCode":99}})", "statusCode"},
      {R"({"response":{"requestId":"1","statusCode":"2000"}})", "statusCode"},
      {R"({"response":{"requestId":"1","statusCode":"abc"}})", "statusCode"},
      {R"({"response":{"requestId":"1"}})", "statusCode"},
      {R"({"response":{"requestId":"1","statusCode":200,"statusDescription":"OK\r\nX-Injected: 1"}})", "control character"},
      {R"({"response":{"requestId":"1","statusCode":200,"responseHeaders":{"a":{"b":1}}}})", "responseHeaders"},
      {R"({"response":{"requestId":"1","statusCode":200,"responseHeaders":[]}})", "responseHeaders"},
      {R"({"response":{"requestId":"1","statusCode":200,"body":"yes"}})", "body"},
      {R"({"request":{"id":"1"}})", "address"},
      {R"({"request":{"address":"wss://x","id":"1","requestHeaders":{"a":true}}})", "requestHeaders"},
  };
  for (const auto& c : cases) {
    INFO(c.json);
    auto p = parse_control_message(c.json);
    CHECK(p.state == ControlParse::State::invalid);
    CHECK_THAT(p.error, Catch::Contains(c.why));
  }
}

TEST_CASE("a malformed control message is refused and never echoes a token", "[rendezvous]") {
  const std::string secret = "SharedAccessSignature sr=secret-resource&sig=c2VjcmV0&se=1&skn=listen";
  struct Case {
    std::string json, why;
  };
  const std::vector<Case> cases{
      {"not json", "not JSON"},
      {"[1]", "one member"},
      {R"({"accept":{"address":"a","id":"b"},"renewToken":{"token":"t"}})", "one member"},
      {R"({"accept":"x"})", "not an object"},
      {R"({"accept":{"id":"b"}})", "'address'"},
      {R"({"accept":{"address":"","id":"b"}})", "'address'"},
      {R"({"accept":{"address":"a","id":7}})", "'id'"},
      {R"({"accept":{"address":"a","id":"b","connectHeaders":{"X":1}}})", "not a string"},
      {R"({"accept":{"address":"a","id":"b","remoteEndpoint":{"port":70000}}})", "port number"},
      {R"({"accept":{"address":"a","id":"b","remoteEndpoint":{"port":-1}}})", "port number"},
      {R"({"renewToken":{"token":["x"]}})", "'token'"},
      {R"({"renewToken":{"token":")" + secret + std::string(5000, 'x') + R"("}})", "'token'"},
      {R"({"renewToken":{"token":")" + secret + R"(")", "not JSON"},
      {std::string(70000, ' ') + "{}", "larger than 64 KiB"},
  };
  for (const auto& c : cases) {
    INFO(c.why);
    auto p = parse_control_message(c.json);
    REQUIRE(p.state == ControlParse::State::invalid);
    CHECK_THAT(p.error, Catch::Contains(c.why));
    CHECK(p.error.find("secret") == std::string::npos);
  }
}

TEST_CASE("a drain notice names the replica's rendezvous address", "[rendezvous]") {
  auto p = parse_control_message(R"({"drain":{"address":"tls://relay-b.example.net:7443","reason":"relay is shutting down"}})");
  REQUIRE(p.state == ControlParse::State::ok);
  const auto& d = std::get<DrainMessage>(p.message);
  CHECK(d.address == "tls://relay-b.example.net:7443");
  CHECK(d.reason == "relay is shutting down");
  // What the relay sends parses back to the same notice; the reason may be left out.
  auto again = parse_control_message(to_json(d));
  REQUIRE(again.state == ControlParse::State::ok);
  CHECK(std::get<DrainMessage>(again.message).address == d.address);
  auto bare = parse_control_message(to_json(DrainMessage{"wss://relay-b:443", ""}));
  REQUIRE(bare.state == ControlParse::State::ok);
  CHECK(std::get<DrainMessage>(bare.message).reason.empty());

  struct Case {
    std::string json, why;
  };
  const std::vector<Case> malformed{
      {R"({"drain":"tls://relay:7443"})", "not an object"},
      {R"({"drain":{}})", "'address'"},
      {R"({"drain":{"address":""}})", "'address'"},
      {R"({"drain":{"address":7}})", "'address'"},
      {R"({"drain":{"address":"relay:7443"}})", "'address'"},
      {R"({"drain":{"address":"tls://relay"}})", "'address'"},
      {R"({"drain":{"address":"tls://relay:"}})", "'address'"},
      {R"({"drain":{"address":"tls://relay:7443/path"}})", "'address'"},
      {R"({"drain":{"address":"tls://user@relay:7443"}})", "'address'"},
      {R"({"drain":{"address":"tls://)" + std::string(600, 'a') + R"(:1"}})", "'address'"},
      {R"({"drain":{"address":"tls://relay:7443","reason":["x"]}})", "'drain.reason'"},
      {R"({"drain":{"address":"tls://relay:7443","reason":"a\nb"}})", "control character"},
  };
  for (const auto& c : malformed) {
    INFO(c.json);
    auto m = parse_control_message(c.json);
    CHECK(m.state == ControlParse::State::invalid);
    CHECK_THAT(m.error, Catch::Contains(c.why));
  }
}

TEST_CASE("an agent drains the sessions whose rendezvous went through the named replica", "[rendezvous]") {
  // tls form: the accept address is the replica's rendezvous port itself.
  CHECK(rendezvous_through("tls://relay-b.example.net:7443", "tls://relay-b.example.net:7443"));
  CHECK(rendezvous_through("TLS://Relay-B.example.net:7443", "tls://relay-b.example.net:7443"));
  // ws form: the replica's accept URL, with its path and query.
  CHECK(rendezvous_through("wss://relay-b:443/$hc/clusters/s/g/n?sb-hc-action=accept&sb-hc-id=4cb5", "wss://relay-b:443"));
  // Another replica, another port of the same host, another form, a longer host name.
  CHECK_FALSE(rendezvous_through("tls://relay-a.example.net:7443", "tls://relay-b.example.net:7443"));
  CHECK_FALSE(rendezvous_through("tls://relay-b.example.net:7444", "tls://relay-b.example.net:7443"));
  CHECK_FALSE(rendezvous_through("tls://relay-b.example.net:74430", "tls://relay-b.example.net:7443"));
  CHECK_FALSE(rendezvous_through("wss://relay-b.example.net:7443/$hc/x", "tls://relay-b.example.net:7443"));
  CHECK_FALSE(rendezvous_through("tls://relay-b.example.net.evil:7443", "tls://relay-b.example.net"));
  CHECK_FALSE(rendezvous_through("tls://relay-b:7443", ""));
  CHECK_FALSE(rendezvous_through("", "tls://relay-b:7443"));
}
