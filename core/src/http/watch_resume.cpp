// Watch event lines and resume targets (see watch_resume.hpp).
#include "clusterconnect/http/watch_resume.hpp"

#include <nlohmann/json.hpp>

#include "clusterconnect/ascii.hpp"

namespace clusterconnect::http {
namespace {

// One `name=value` parameter of a query; the name percent-decoded enough for
// the plain ASCII names compared here.
struct Param {
  std::string_view name, value, raw;
};

template <class Fn>
void for_each_param(std::string_view query, Fn fn) {
  while (!query.empty()) {
    auto amp = query.find('&');
    std::string_view raw = query.substr(0, amp);
    if (!raw.empty()) {
      auto eq = raw.find('=');
      fn(Param{raw.substr(0, eq), eq == std::string_view::npos ? std::string_view() : raw.substr(eq + 1), raw});
    }
    if (amp == std::string_view::npos) break;
    query.remove_prefix(amp + 1);
  }
}

// The object member `name` of `j`, or null.
const nlohmann::json* member_object(const nlohmann::json& j, const char* name) {
  if (!j.is_object()) return nullptr;
  auto it = j.find(name);
  return it != j.end() && it->is_object() ? &*it : nullptr;
}

std::string_view query_of(std::string_view target) {
  auto q = target.find('?');
  return q == std::string_view::npos ? std::string_view() : target.substr(q + 1);
}

std::string_view param(std::string_view target, std::string_view name) {
  std::string_view found;
  for_each_param(query_of(target), [&](const Param& p) {
    if (p.name == name) found = p.value;
  });
  return found;
}

bool is_unreserved(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '.' ||
         c == '_' || c == '~';
}

std::string percent_encode(std::string_view v) {
  static const char* hex = "0123456789ABCDEF";
  std::string out;
  for (char c : v) {
    if (is_unreserved(c)) {
      out.push_back(c);
    } else {
      auto b = static_cast<unsigned char>(c);
      out.push_back('%');
      out.push_back(hex[b >> 4]);
      out.push_back(hex[b & 15]);
    }
  }
  return out;
}

}  // namespace

bool is_watch_request(std::string_view method, std::string_view target) {
  if (method != "GET") return false;
  std::string_view path = target.substr(0, target.find('?'));
  // Legacy watch paths: /api/v1/watch/..., /apis/GROUP/VERSION/watch/...
  if (path.find("/watch/") != std::string_view::npos) return true;
  std::string_view w = param(target, "watch");
  return w == "true" || w == "1" || ascii_iequals(w, "true");
}

bool is_json_watch_body(std::string_view content_type, std::string_view content_encoding) {
  if (!content_encoding.empty() && !ascii_iequals(content_encoding, "identity")) return false;
  return ascii_istarts_with(content_type, "application/json");
}

WatchEventLines::WatchEventLines(std::string_view target, std::size_t line_limit)
    : target_(target), line_limit_(line_limit) {
  std::string_view rv = param(target, "resourceVersion");
  if (param(target, "sendInitialEvents") == "true") {
    // Initial events carry their objects' own versions, in no order; the
    // bookmark that ends them names the version the watch continues from.
    points_valid_ = false;
    awaits_initial_end_ = true;
  } else if (rv.empty() || rv == "0") {
    // "Get state and start at most recent": synthetic ADDED events first,
    // with no mark where they end. Only a break before any event resumes.
    points_valid_ = false;
  }
}

std::string_view WatchEventLines::feed(std::string_view body, bool end) {
  if (!tracking_) return body;
  out_.clear();
  auto last = body.rfind('\n');
  if (last == std::string_view::npos && !end) {
    if (pending_.size() + body.size() > line_limit_) {
      // A line past the limit: stop tracking, forward what we hold.
      tracking_ = false;
      out_.swap(pending_);
      out_.append(body);
      return out_;
    }
    pending_.append(body);
    return {};
  }
  const std::size_t take = end ? body.size() : last + 1;
  out_.swap(pending_);
  out_.append(body.substr(0, take));
  pending_.assign(body.substr(take));
  std::string_view lines(out_);
  while (!lines.empty()) {
    auto nl = lines.find('\n');
    on_line(lines.substr(0, nl));
    if (nl == std::string_view::npos) break;
    lines.remove_prefix(nl + 1);
  }
  if (pending_.size() > line_limit_) {
    tracking_ = false;
    out_.append(pending_);
    pending_.clear();
  }
  return out_;
}

void WatchEventLines::on_line(std::string_view line) {
  ++lines_;
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  if (line.find_first_not_of(" \t") == std::string_view::npos) return;
  auto j = nlohmann::json::parse(line, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return;
  auto type = j.find("type");
  auto object = j.find("object");
  if (type == j.end() || !type->is_string() || object == j.end() || !object->is_object()) return;
  ++events_;
  const nlohmann::json* metadata = member_object(*object, "metadata");
  if (!metadata) return;
  auto rv = metadata->find("resourceVersion");
  if ((rv == metadata->end() || !rv->is_string()) && object->value("kind", "") == "Table") {
    // A Table event (kubectl's default output) may name the version only in
    // its row's object (PartialObjectMetadata).
    auto rows = object->find("rows");
    if (rows != object->end() && rows->is_array() && rows->size() == 1) {
      const nlohmann::json* row_object = member_object((*rows)[0], "object");
      const nlohmann::json* row_metadata = row_object ? member_object(*row_object, "metadata") : nullptr;
      if (row_metadata) {
        metadata = row_metadata;
        rv = metadata->find("resourceVersion");
      }
    }
  }
  if (rv == metadata->end() || !rv->is_string() || rv->get_ref<const std::string&>().empty()) return;
  if (!points_valid_ && awaits_initial_end_ && type->get_ref<const std::string&>() == "BOOKMARK") {
    auto annotations = metadata->find("annotations");
    if (annotations != metadata->end() && annotations->is_object()) {
      auto end = annotations->find("k8s.io/initial-events-end");
      if (end != annotations->end() && end->is_string() && end->get_ref<const std::string&>() == "true")
        points_valid_ = true;
    }
  }
  if (points_valid_) resource_version_ = rv->get<std::string>();
}

bool WatchEventLines::resumable() const { return tracking_ && (events_ == 0 || !resource_version_.empty()); }

std::string WatchEventLines::resume_target() const {
  if (resource_version_.empty()) return target_;
  return http::resume_target(target_, resource_version_);
}

std::string resume_target(std::string_view target, std::string_view resource_version) {
  auto q = target.find('?');
  std::string out(target.substr(0, q));
  char sep = '?';
  for_each_param(query_of(target), [&](const Param& p) {
    if (p.name == "resourceVersion" || p.name == "sendInitialEvents" || p.name == "resourceVersionMatch") return;
    out.push_back(sep);
    out.append(p.raw);
    sep = '&';
  });
  out.push_back(sep);
  out.append("resourceVersion=");
  out.append(percent_encode(resource_version));
  return out;
}

std::string watch_error_event(unsigned status, std::string_view body) {
  nlohmann::json object = nlohmann::json::parse(body, nullptr, false);
  if (object.is_discarded() || !object.is_object() || object.value("kind", "") != "Status") {
    std::string message = "resuming the watch failed: the cluster answered HTTP " + std::to_string(status);
    std::string_view text = body.substr(0, 512);
    if (!text.empty()) message += ": " + std::string(text);
    object = {{"kind", "Status"},
              {"apiVersion", "v1"},
              {"metadata", nlohmann::json::object()},
              {"status", "Failure"},
              {"message", std::move(message)},
              {"reason", status == 410 ? "Expired" : "InternalError"},
              {"code", status}};
  }
  nlohmann::json event = {{"type", "ERROR"}, {"object", std::move(object)}};
  return event.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
}

}  // namespace clusterconnect::http
