#include "rendezvous/control_message.hpp"

#include <nlohmann/json.hpp>

namespace clusterconnect::tunnel::rendezvous {

namespace {

using json = nlohmann::json;

ControlParse invalid(std::string why) {
  ControlParse p;
  p.state = ControlParse::State::invalid;
  p.error = std::move(why);
  return p;
}

// A string member, at most `limit` bytes; `required` ones must be non-empty.
bool string_member(const json& o, const char* name, std::string& out, bool required, std::size_t limit) {
  auto it = o.find(name);
  if (it == o.end()) return !required;
  if (!it->is_string()) return false;
  out = it->get<std::string>();
  return (!required || !out.empty()) && out.size() <= limit;
}

ControlParse parse_accept(const json& body) {
  if (!body.is_object()) return invalid("'accept' is not an object");
  AcceptMessage m;
  if (!string_member(body, "address", m.address, true, 4096)) return invalid("'accept' has no valid 'address'");
  if (!string_member(body, "id", m.id, true, 256)) return invalid("'accept' has no valid 'id'");
  if (auto it = body.find("connectHeaders"); it != body.end() && !it->is_null()) {
    if (!it->is_object()) return invalid("'accept.connectHeaders' is not an object");
    for (const auto& [k, v] : it->items()) {
      if (!v.is_string()) return invalid("'accept.connectHeaders' holds a value that is not a string");
      m.connect_headers.emplace(k, v.get<std::string>());
    }
  }
  if (auto it = body.find("remoteEndpoint"); it != body.end() && !it->is_null()) {
    if (!it->is_object()) return invalid("'accept.remoteEndpoint' is not an object");
    RemoteEndpoint ep;
    if (!string_member(*it, "address", ep.address, false, 256)) return invalid("'accept.remoteEndpoint.address' is not a string");
    if (auto p = it->find("port"); p != it->end()) {
      if (!p->is_number_integer() || p->get<std::int64_t>() < 0 || p->get<std::int64_t>() > 65535)
        return invalid("'accept.remoteEndpoint.port' is not a port number");
      ep.port = static_cast<std::uint16_t>(p->get<std::int64_t>());
    }
    m.remote_endpoint = std::move(ep);
  }
  ControlParse out;
  out.state = ControlParse::State::ok;
  out.message = std::move(m);
  return out;
}

ControlParse parse_renew(const json& body) {
  if (!body.is_object()) return invalid("'renewToken' is not an object");
  RenewTokenMessage m;
  if (!string_member(body, "token", m.token, true, 4096)) return invalid("'renewToken' has no valid 'token'");
  ControlParse out;
  out.state = ControlParse::State::ok;
  out.message = std::move(m);
  return out;
}

}  // namespace

ControlParse parse_control_message(std::string_view text) {
  if (text.size() > max_control_message) return invalid("a control message larger than 64 KiB");
  json j = json::parse(text.begin(), text.end(), nullptr, false);
  if (j.is_discarded()) return invalid("a control message that is not JSON");
  if (!j.is_object() || j.size() != 1) return invalid("a control message must be an object with one member");
  const auto member = j.begin();
  const std::string& kind = member.key();
  const json& body = member.value();
  if (kind == "accept") return parse_accept(body);
  if (kind == "renewToken") return parse_renew(body);
  ControlParse p;
  p.state = ControlParse::State::unknown_kind;
  p.kind = kind.size() <= 64 ? kind : kind.substr(0, 64);
  return p;
}

std::string to_json(const AcceptMessage& m) {
  json body{{"address", m.address}, {"id", m.id}, {"connectHeaders", json::object()}};
  for (const auto& [k, v] : m.connect_headers) body["connectHeaders"][k] = v;
  if (m.remote_endpoint) body["remoteEndpoint"] = {{"address", m.remote_endpoint->address}, {"port", m.remote_endpoint->port}};
  return json{{"accept", std::move(body)}}.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string to_json(const RenewTokenMessage& m) {
  return json{{"renewToken", {{"token", m.token}}}}.dump(-1, ' ', false, json::error_handler_t::replace);
}

}  // namespace clusterconnect::tunnel::rendezvous
