// RequestHead helpers and Status replies: kept out of the Beast translation
// unit so policies and their tests compile without it.
#include <algorithm>

#include <nlohmann/json.hpp>

#include "clusterconnect/http/forward.hpp"
#include "clusterconnect/ascii.hpp"

namespace clusterconnect::http {
namespace {

using clusterconnect::ascii_iequals;
using clusterconnect::ascii_istarts_with;
bool iequals(std::string_view a, std::string_view b) { return ascii_iequals(a, b); }
bool istarts_with(std::string_view s, std::string_view prefix) { return ascii_istarts_with(s, prefix); }

}  // namespace

const std::string* RequestHead::find(std::string_view name) const {
  for (const auto& h : headers)
    if (iequals(h.name, name)) return &h.value;
  return nullptr;
}

std::vector<std::string> RequestHead::all(std::string_view name) const {
  std::vector<std::string> out;
  for (const auto& h : headers)
    if (iequals(h.name, name)) out.push_back(h.value);
  return out;
}

void RequestHead::set(std::string name, std::string value) {
  remove(name);
  headers.push_back({std::move(name), std::move(value)});
}

void RequestHead::add(std::string name, std::string value) { headers.push_back({std::move(name), std::move(value)}); }

std::size_t RequestHead::remove(std::string_view name) {
  auto it = std::remove_if(headers.begin(), headers.end(), [&](const Header& h) { return iequals(h.name, name); });
  std::size_t n = static_cast<std::size_t>(headers.end() - it);
  headers.erase(it, headers.end());
  return n;
}

std::size_t RequestHead::remove_prefix(std::string_view prefix) {
  auto it = std::remove_if(headers.begin(), headers.end(),
                           [&](const Header& h) { return istarts_with(h.name, prefix); });
  std::size_t n = static_cast<std::size_t>(headers.end() - it);
  headers.erase(it, headers.end());
  return n;
}

Reply status_reply(unsigned code, std::string reason, std::string message) {
  nlohmann::json j = {{"kind", "Status"},      {"apiVersion", "v1"},        {"metadata", nlohmann::json::object()},
                      {"status", "Failure"},   {"message", std::move(message)}, {"reason", std::move(reason)},
                      {"code", code}};
  Reply r;
  r.status = code;
  r.content_type = "application/json";
  // Replace invalid UTF-8 (a reason string may carry bytes from the network)
  // rather than throwing.
  r.body = j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  return r;
}

}  // namespace clusterconnect::http
