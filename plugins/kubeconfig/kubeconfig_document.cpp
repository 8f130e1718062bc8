#include "kubeconfig_document.hpp"

#include <yaml-cpp/binary.h>

#include <algorithm>
#include <initializer_list>
#include <string_view>
#include <utility>

namespace clusterconnect::kubeconfig {
namespace {

constexpr const char* list_keys[] = {"clusters", "users", "contexts"};

// Looks a key up without yaml-cpp's non-const operator[], which inserts a
// placeholder pair for a missing key.
YAML::Node child(const YAML::Node& map, const char* key) {
  if (!map.IsDefined() || !map.IsMap()) return YAML::Node(YAML::NodeType::Undefined);
  const YAML::Node& m = map;
  YAML::Node v = m[key];
  return v.IsDefined() ? v : YAML::Node(YAML::NodeType::Undefined);
}

bool is_absent(const YAML::Node& n) { return !n.IsDefined() || n.IsNull(); }

std::string scalar_or_empty(const YAML::Node& n) { return n.IsDefined() && n.IsScalar() ? n.Scalar() : std::string(); }

// Whether `v` written plain reads back as a string in both YAML 1.1 (go-yaml,
// hence kubectl) and YAML 1.2. Anything doubtful is written quoted, so a
// cluster named "true" or a token "0123" stays a string.
bool plain_reads_as_string(std::string_view v) {
  if (v.empty()) return false;
  const char first = v.front();
  if ((first >= '0' && first <= '9') || first == '.' || first == '+' || first == '-' || first == '=') return false;
  for (char c : v) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
                    c == '_' || c == '-' || c == '/' || c == ':' || c == '@' || c == '+' || c == '=';
    if (!ok) return false;
  }
  std::string lower;
  for (char c : v) lower += static_cast<char>(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
  for (const char* word : {"y", "n", "yes", "no", "true", "false", "on", "off", "null"})
    if (lower == word) return false;
  return true;
}

// A string scalar; the non-specific tag "!" is what yaml-cpp gives quoted
// scalars, and the writer keeps such scalars quoted.
YAML::Node text_scalar(const std::string& v) {
  YAML::Node n(v);
  if (!plain_reads_as_string(v)) n.SetTag("!");
  return n;
}

std::string base64(const std::string& bytes) {
  return YAML::EncodeBase64(reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size());
}

Result<YAML::Node> list_of(YAML::Node& root, const char* key) {
  YAML::Node existing = child(root, key);
  if (is_absent(existing)) root[key] = YAML::Node(YAML::NodeType::Sequence);
  YAML::Node list = root[key];
  if (!list.IsSequence()) return fail(std::string("its '") + key + "' field is not a list");
  return list;
}

bool has_name(const YAML::Node& item, const std::string& name) {
  const YAML::Node n = child(item, "name");
  return n.IsDefined() && n.IsScalar() && n.Scalar() == name;
}

// Replaces the body of the first item named `name` (keeping the item's other
// fields, its place in the list and the body fields in `carried`), drops later
// duplicates so kubectl cannot pick a stale one, or appends a new item.
Result<void> upsert(YAML::Node& root, const char* list_key, const char* body_key, const std::string& name,
                    YAML::Node body, std::initializer_list<const char*> carried) {
  auto list = list_of(root, list_key);
  if (!list) return fail(list.error());
  YAML::Node rebuilt(YAML::NodeType::Sequence);
  bool replaced = false;
  bool dropped = false;
  for (std::size_t i = 0; i < list->size(); ++i) {
    YAML::Node item = (*list)[i];
    if (!has_name(item, name)) {
      rebuilt.push_back(item);
      continue;
    }
    if (replaced) {
      dropped = true;
      continue;
    }
    const YAML::Node old_body = child(item, body_key);
    for (const char* field : carried) {
      const YAML::Node kept = child(old_body, field);
      if (kept.IsDefined() && !child(body, field).IsDefined()) body[field] = YAML::Clone(kept);
    }
    item[body_key] = body;
    rebuilt.push_back(item);
    replaced = true;
  }
  if (!replaced) {
    YAML::Node item(YAML::NodeType::Map);
    item["name"] = text_scalar(name);
    item[body_key] = body;
    list->push_back(item);
  } else if (dropped) {
    root[list_key] = rebuilt;
  }
  return {};
}

Result<void> drop_named(YAML::Node& root, const char* list_key, const std::string& name) {
  if (name.empty()) return {};
  YAML::Node list = child(root, list_key);
  if (is_absent(list)) return {};
  if (!list.IsSequence()) return fail(std::string("its '") + list_key + "' field is not a list");
  YAML::Node kept(YAML::NodeType::Sequence);
  bool dropped = false;
  for (std::size_t i = 0; i < list.size(); ++i) {
    if (has_name(list[i], name))
      dropped = true;
    else
      kept.push_back(list[i]);
  }
  if (dropped) root[list_key] = kept;
  return {};
}

enum class Kind { null, scalar, sequence, map };

Kind kind_of(const YAML::Node& n) {
  if (!n.IsDefined() || n.IsNull()) return Kind::null;
  if (n.IsScalar()) return Kind::scalar;
  if (n.IsSequence()) return Kind::sequence;
  return Kind::map;
}

// "?" (plain), "" (built in code) and, on collections, "!" all mean "no tag".
std::string tag_class(const YAML::Node& n) {
  const std::string& t = n.Tag();
  if (t.empty() || t == "?" || (t == "!" && !n.IsScalar())) return "?";
  return t;
}

std::string at(const YAML::Mark& m) {
  return "line " + std::to_string(m.line + 1) + ", column " + std::to_string(m.column + 1);
}

// Whether the quoted scalar opening at `begin` is closed before the text
// ends. yaml-cpp 0.7 accepts an unterminated quote at the end of a file
// where kubectl (go-yaml) refuses the file.
bool quote_closes(std::string_view text, std::size_t begin) {
  const char quote = text[begin];
  for (std::size_t i = begin + 1; i < text.size(); ++i) {
    if (quote == '"' && text[i] == '\\') {
      ++i;
    } else if (text[i] == quote) {
      if (quote == '\'' && i + 1 < text.size() && text[i + 1] == '\'') {
        ++i;  // '' is a quote inside a single-quoted scalar
        continue;
      }
      return true;
    }
  }
  return false;
}

// What yaml-cpp lets through but YAML (and kubectl) does not: duplicate keys
// (kubectl would take the last, yaml-cpp's lookups the first) and quotes left
// open at the end of the file.
Result<void> check_strict(std::string_view text, const std::vector<std::size_t>& lines, const YAML::Node& n) {
  if (n.IsScalar() && n.Tag() == "!") {
    const YAML::Mark m = n.Mark();
    if (m.line >= 0 && static_cast<std::size_t>(m.line) < lines.size()) {
      const std::size_t begin = lines[m.line] + static_cast<std::size_t>(m.column);
      if (begin < text.size() && (text[begin] == '"' || text[begin] == '\'') && !quote_closes(text, begin))
        return fail("it is not valid YAML (" + at(m) + ": a quoted string is never closed)");
    }
  } else if (n.IsSequence()) {
    for (const auto& item : n)
      if (auto r = check_strict(text, lines, item); !r) return r;
  } else if (n.IsMap()) {
    std::vector<std::string> seen;
    for (const auto& kv : n) {
      if (kv.first.IsScalar()) {
        if (std::find(seen.begin(), seen.end(), kv.first.Scalar()) != seen.end())
          return fail("it is not valid YAML (" + at(kv.first.Mark()) + ": duplicate key '" + kv.first.Scalar() + "')");
        seen.push_back(kv.first.Scalar());
      }
      if (auto r = check_strict(text, lines, kv.first); !r) return r;
      if (auto r = check_strict(text, lines, kv.second); !r) return r;
    }
  }
  return {};
}

}  // namespace

Result<YAML::Node> parse_kubeconfig(const std::string& text) noexcept {
  try {
    std::vector<YAML::Node> docs = YAML::LoadAll(text);
    if (docs.empty()) return YAML::Node();
    if (docs.size() > 1)
      return fail("it holds " + std::to_string(docs.size()) + " YAML documents where a kubeconfig holds one");
    YAML::Node root = docs.front();
    // yaml-cpp's columns count bytes, but not a UTF-8 byte order mark.
    std::vector<std::size_t> lines{text.rfind("\xEF\xBB\xBF", 0) == 0 ? 3u : 0u};
    for (std::size_t i = 0; i < text.size(); ++i)
      if (text[i] == '\n') lines.push_back(i + 1);
    if (auto strict = check_strict(text, lines, root); !strict) return fail(strict.error());
    if (root.IsNull()) return YAML::Node();
    if (!root.IsMap()) return fail("it is not a kubeconfig (its top level is not a mapping)");
    for (const char* key : list_keys) {
      const YAML::Node list = child(root, key);
      if (!is_absent(list) && !list.IsSequence())
        return fail(std::string("it is not a valid kubeconfig (its '") + key + "' field is not a list)");
    }
    const YAML::Node current = child(root, "current-context");
    if (!is_absent(current) && !current.IsScalar())
      return fail("it is not a valid kubeconfig (its 'current-context' field is not a string)");
    return root;
  } catch (const YAML::Exception& e) {
    return fail("it is not valid YAML (line " + std::to_string(e.mark.line + 1) + ", column " +
                std::to_string(e.mark.column + 1) + ": " + e.msg + ")");
  } catch (const std::exception& e) {
    return fail(std::string("it could not be read as YAML (") + e.what() + ")");
  }
}

Result<void> validate_entry(const KubeconfigEntry& entry) {
  if (entry.cluster.empty() || entry.user.empty() || entry.context.empty())
    return fail("the kubeconfig entry needs a cluster, a user and a context name");
  if (entry.server.empty()) return fail("the kubeconfig entry needs a server URL");
  return {};
}

YAML::Node new_kubeconfig() {
  YAML::Node root(YAML::NodeType::Map);
  root["apiVersion"] = "v1";
  root["kind"] = "Config";
  return root;
}

Result<void> merge_entry(YAML::Node& root, const KubeconfigEntry& entry) {
  if (auto valid = validate_entry(entry); !valid) return valid;
  if (!root.IsMap()) return fail("it is not a kubeconfig (its top level is not a mapping)");

  YAML::Node cluster(YAML::NodeType::Map);
  cluster["server"] = text_scalar(entry.server);
  if (!entry.certificate_authority_data.empty())
    cluster["certificate-authority-data"] = text_scalar(base64(entry.certificate_authority_data));
  // Extensions belong to other tools (client-go keeps them for that reason);
  // everything else in a replaced entry is ours to replace, so a stale
  // insecure-skip-tls-verify or client certificate cannot linger.
  if (auto r = upsert(root, "clusters", "cluster", entry.cluster, cluster, {"extensions"}); !r) return r;

  YAML::Node user(YAML::NodeType::Map);
  user["token"] = text_scalar(entry.token);
  if (auto r = upsert(root, "users", "user", entry.user, user, {"extensions"}); !r) return r;

  YAML::Node context(YAML::NodeType::Map);
  context["cluster"] = text_scalar(entry.cluster);
  context["user"] = text_scalar(entry.user);
  if (!entry.namespace_.empty()) context["namespace"] = text_scalar(entry.namespace_);
  // Without a namespace of ours, a namespace the user chose for this context
  // (kubectl config set-context --current --namespace=...) survives a restart.
  if (auto r = upsert(root, "contexts", "context", entry.context, context, {"namespace", "extensions"}); !r)
    return r;

  if (entry.set_current) root["current-context"] = text_scalar(entry.context);
  return {};
}

Result<void> remove_entries(YAML::Node& root, const std::string& cluster, const std::string& user,
                            const std::string& context) {
  if (!root.IsMap()) return fail("it is not a kubeconfig (its top level is not a mapping)");
  if (auto r = drop_named(root, "clusters", cluster); !r) return r;
  if (auto r = drop_named(root, "users", user); !r) return r;
  if (auto r = drop_named(root, "contexts", context); !r) return r;
  if (!context.empty() && scalar_or_empty(child(root, "current-context")) == context)
    root["current-context"] = text_scalar("");
  return {};
}

YAML::Node standalone_kubeconfig(const KubeconfigEntry& entry) {
  YAML::Node root = new_kubeconfig();
  KubeconfigEntry current = entry;
  current.set_current = true;
  (void)merge_entry(root, current);
  return root;
}

bool same_node(const YAML::Node& a, const YAML::Node& b) {
  const Kind ka = kind_of(a);
  if (ka != kind_of(b)) return false;
  switch (ka) {
    case Kind::null:
      return true;
    case Kind::scalar:
      return a.Scalar() == b.Scalar() && tag_class(a) == tag_class(b);
    case Kind::sequence:
      if (a.size() != b.size() || tag_class(a) != tag_class(b)) return false;
      for (std::size_t i = 0; i < a.size(); ++i)
        if (!same_node(a[i], b[i])) return false;
      return true;
    case Kind::map: {
      if (a.size() != b.size() || tag_class(a) != tag_class(b)) return false;
      for (auto ia = a.begin(), ib = b.begin(); ia != a.end() && ib != b.end(); ++ia, ++ib)
        if (!same_node(ia->first, ib->first) || !same_node(ia->second, ib->second)) return false;
      return true;
    }
  }
  return false;
}

}  // namespace clusterconnect::kubeconfig
