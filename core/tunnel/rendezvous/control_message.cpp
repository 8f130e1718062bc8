#include "rendezvous/control_message.hpp"

#include <algorithm>

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

ControlParse ok(ControlMessage m) {
  ControlParse out;
  out.state = ControlParse::State::ok;
  out.message = std::move(m);
  return out;
}

// A headers object: string values (an array of strings, as some SDKs send
// repeated fields, is joined with ", "); false when it is anything else.
bool headers_member(const json& o, const char* name, std::map<std::string, std::string>& out) {
  auto it = o.find(name);
  if (it == o.end() || it->is_null()) return true;
  if (!it->is_object()) return false;
  for (const auto& [k, v] : it->items()) {
    if (k.empty() || k.size() > 256) return false;
    std::string value;
    if (v.is_string()) {
      value = v.get<std::string>();
    } else if (v.is_array()) {
      for (const auto& item : v) {
        if (!item.is_string()) return false;
        value += (value.empty() ? "" : ", ") + item.get<std::string>();
      }
    } else if (v.is_number()) {
      value = v.dump();
    } else {
      return false;
    }
    out.emplace(k, std::move(value));
  }
  return true;
}

bool remote_endpoint_member(const json& body, std::optional<RemoteEndpoint>& out) {
  auto it = body.find("remoteEndpoint");
  if (it == body.end() || it->is_null()) return true;
  if (!it->is_object()) return false;
  RemoteEndpoint ep;
  if (!string_member(*it, "address", ep.address, false, 256)) return false;
  if (auto p = it->find("port"); p != it->end()) {
    if (!p->is_number_integer() || p->get<std::int64_t>() < 0 || p->get<std::int64_t>() > 65535) return false;
    ep.port = static_cast<std::uint16_t>(p->get<std::int64_t>());
  }
  out = std::move(ep);
  return true;
}

bool body_flag(const json& body, bool& out) {
  auto it = body.find("body");
  if (it == body.end() || it->is_null()) return true;
  if (!it->is_boolean()) return false;
  out = it->get<bool>();
  return true;
}

ControlParse parse_request(const json& body) {
  if (!body.is_object()) return invalid("'request' is not an object");
  RequestMessage m;
  if (!string_member(body, "address", m.address, true, 4096)) return invalid("'request' has no valid 'address'");
  if (!string_member(body, "id", m.id, true, 256)) return invalid("'request' has no valid 'id'");
  if (!string_member(body, "method", m.method, false, 64)) return invalid("'request.method' is not a string");
  if (!string_member(body, "requestTarget", m.target, false, 16 * 1024)) return invalid("'request.requestTarget' is not a string");
  if (!headers_member(body, "requestHeaders", m.headers)) return invalid("'request.requestHeaders' is not an object of strings");
  if (!remote_endpoint_member(body, m.remote_endpoint)) return invalid("'request.remoteEndpoint' is not an address and port");
  if (!body_flag(body, m.body)) return invalid("'request.body' is not a boolean");
  return ok(std::move(m));
}

ControlParse parse_response(const json& body) {
  if (!body.is_object()) return invalid("'response' is not an object");
  ResponseMessage m;
  if (!string_member(body, "requestId", m.request_id, true, 256)) return invalid("'response' has no valid 'requestId'");
  // A number, or its decimal string (both are seen).
  auto code = body.find("statusCode");
  if (code != body.end() && code->is_number_integer()) {
    const auto n = code->get<std::int64_t>();
    m.status = n >= 100 && n <= 999 ? static_cast<unsigned>(n) : 0;
  } else if (code != body.end() && code->is_string()) {
    const auto& t = code->get_ref<const std::string&>();
    if (t.size() == 3 && std::all_of(t.begin(), t.end(), [](char c) { return c >= '0' && c <= '9'; }))
      m.status = static_cast<unsigned>(std::stoul(t));
    if (m.status < 100) m.status = 0;
  }
  if (m.status == 0) return invalid("'response.statusCode' is not a status code (100 to 999)");
  if (!string_member(body, "statusDescription", m.description, false, 512))
    return invalid("'response.statusDescription' is not a string");
  for (char c : m.description)
    if (static_cast<unsigned char>(c) < 0x20 && c != '\t') return invalid("'response.statusDescription' holds a control character");
  if (!headers_member(body, "responseHeaders", m.headers)) return invalid("'response.responseHeaders' is not an object of strings");
  if (!body_flag(body, m.body)) return invalid("'response.body' is not a boolean");
  return ok(std::move(m));
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

// scheme://authority: what a drain names. No user info, path, query or
// fragment; a host and a port.
bool drain_origin(std::string_view a) {
  const auto sep = a.find("://");
  if (sep == std::string_view::npos || sep == 0) return false;
  const auto authority = a.substr(sep + 3);
  if (authority.empty() || authority.find_first_of("/?#@ ") != std::string_view::npos) return false;
  const auto colon = authority.rfind(':');
  return colon != std::string_view::npos && colon > 0 && colon + 1 < authority.size();
}

ControlParse parse_drain(const json& body) {
  if (!body.is_object()) return invalid("'drain' is not an object");
  DrainMessage m;
  if (!string_member(body, "address", m.address, true, 512) || !drain_origin(m.address))
    return invalid("'drain' has no valid 'address' (scheme://HOST:PORT)");
  if (!string_member(body, "reason", m.reason, false, 512)) return invalid("'drain.reason' is not a string");
  for (char c : m.reason)
    if (static_cast<unsigned char>(c) < 0x20) return invalid("'drain.reason' holds a control character");
  return ok(std::move(m));
}

}  // namespace

bool rendezvous_through(std::string_view accept_address, std::string_view drain_address) {
  if (drain_address.empty() || accept_address.size() < drain_address.size()) return false;
  for (std::size_t i = 0; i < drain_address.size(); ++i) {
    char a = accept_address[i], b = drain_address[i];
    if (a >= 'A' && a <= 'Z') a = static_cast<char>(a - 'A' + 'a');
    if (b >= 'A' && b <= 'Z') b = static_cast<char>(b - 'A' + 'a');
    if (a != b) return false;
  }
  if (accept_address.size() == drain_address.size()) return true;
  const char next = accept_address[drain_address.size()];
  return next == '/' || next == '?';
}

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
  if (kind == "request") return parse_request(body);
  if (kind == "response") return parse_response(body);
  if (kind == "drain") return parse_drain(body);
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

std::string to_json(const RequestMessage& m) {
  json body{{"address", m.address}, {"id", m.id}};
  if (!m.method.empty()) {
    body["requestTarget"] = m.target;
    body["method"] = m.method;
    body["requestHeaders"] = json::object();
    for (const auto& [k, v] : m.headers) body["requestHeaders"][k] = v;
    body["body"] = m.body;
  }
  if (m.remote_endpoint) body["remoteEndpoint"] = {{"address", m.remote_endpoint->address}, {"port", m.remote_endpoint->port}};
  return json{{"request", std::move(body)}}.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string to_json(const ResponseMessage& m) {
  json body{{"requestId", m.request_id}, {"statusCode", m.status}, {"statusDescription", m.description},
            {"responseHeaders", json::object()}, {"body", m.body}};
  for (const auto& [k, v] : m.headers) body["responseHeaders"][k] = v;
  return json{{"response", std::move(body)}}.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string to_json(const RenewTokenMessage& m) {
  return json{{"renewToken", {{"token", m.token}}}}.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string to_json(const DrainMessage& m) {
  json body{{"address", m.address}};
  if (!m.reason.empty()) body["reason"] = m.reason;
  return json{{"drain", std::move(body)}}.dump(-1, ' ', false, json::error_handler_t::replace);
}

}  // namespace clusterconnect::tunnel::rendezvous
