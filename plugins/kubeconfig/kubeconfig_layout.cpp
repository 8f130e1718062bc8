#include "kubeconfig_layout.hpp"

#include <optional>
#include <string_view>
#include <vector>

#include "kubeconfig_document.hpp"

namespace clusterconnect::kubeconfig {
namespace {

constexpr std::size_t npos = std::string_view::npos;

void emit_tag(YAML::Emitter& out, const std::string& tag) {
  if (tag.empty() || tag == "?" || tag == "!") return;
  static const std::string core_prefix = "tag:yaml.org,2002:";
  if (tag.rfind(core_prefix, 0) == 0)
    out << YAML::SecondaryTag(tag.substr(core_prefix.size()));
  else if (tag.front() == '!')
    out << YAML::LocalTag(tag.substr(1));
  else
    out << YAML::VerbatimTag(tag);
}

void emit_node(YAML::Emitter& out, const YAML::Node& n) {
  if (!n.IsDefined() || n.IsNull()) {
    out << YAML::Null;
    return;
  }
  emit_tag(out, n.Tag());
  if (n.IsScalar()) {
    // A scalar that was quoted must stay quoted: plain, "0123" or "true"
    // would read back as a number or a boolean.
    if (n.Tag() == "!") out << YAML::DoubleQuoted;
    out << n.Scalar();
    return;
  }
  if (n.Style() == YAML::EmitterStyle::Flow || n.size() == 0) out << YAML::Flow;
  if (n.IsSequence()) {
    out << YAML::BeginSeq;
    for (const auto& item : n) emit_node(out, item);
    out << YAML::EndSeq;
  } else {
    out << YAML::BeginMap;
    for (const auto& kv : n) {
      out << YAML::Key;
      emit_node(out, kv.first);
      out << YAML::Value;
      emit_node(out, kv.second);
    }
    out << YAML::EndMap;
  }
}

YAML::Emitter& configure(YAML::Emitter& out) {
  out.SetIndent(2);
  out.SetNullFormat(YAML::LowerNull);  // "null", as kubectl writes it
  return out;
}

std::string finish(const YAML::Emitter& out) {
  if (!out.good()) throw std::runtime_error("yaml-cpp cannot emit it: " + out.GetLastError());
  std::string text = out.c_str();
  if (!text.empty() && text.back() != '\n') text += '\n';
  return text;
}

std::string emit_pair(const YAML::Node& key, const YAML::Node& value) {
  YAML::Emitter out;
  configure(out) << YAML::BeginMap << YAML::Key;
  emit_node(out, key);
  out << YAML::Value;
  emit_node(out, value);
  out << YAML::EndMap;
  return finish(out);
}

std::string emit_key_line(const YAML::Node& key) {
  YAML::Emitter out;
  emit_node(configure(out), key);
  std::string text = finish(out);
  text.pop_back();
  return text + ":\n";
}

// One list entry as "- ..." lines, shifted right to the list's dash column.
std::string emit_item(const YAML::Node& item, std::size_t dash) {
  YAML::Emitter out;
  configure(out) << YAML::BeginSeq;
  emit_node(out, item);
  out << YAML::EndSeq;
  const std::string text = finish(out);
  const std::string pad(dash, ' ');
  std::string shifted;
  std::size_t at = 0;
  while (at < text.size()) {
    std::size_t end = text.find('\n', at);
    end = end == npos ? text.size() : end + 1;
    shifted += pad;
    shifted.append(text, at, end - at);
    at = end;
  }
  return shifted;
}

struct Span {
  std::size_t begin = 0;
  std::size_t end = 0;
};

struct SourceItem {
  Span span;
  YAML::Node node;
  bool used = false;
};

struct SourceSection {
  std::string key;
  YAML::Node value;
  int key_line = 0;
  Span span;
  bool used = false;
  // Set when the value is a block list whose entries can be copied one by one.
  bool has_items = false;
  std::size_t header_end = 0;
  std::size_t dash = 0;
  std::vector<SourceItem> items;
};

struct Source {
  std::string_view text;
  std::vector<std::size_t> lines;  // offset of each line's first byte
  std::size_t prefix_end = 0;
  std::vector<SourceSection> sections;

  std::string_view slice(Span s) const { return text.substr(s.begin, s.end - s.begin); }
};

std::vector<std::size_t> line_starts(std::string_view text) {
  std::vector<std::size_t> starts{0};
  for (std::size_t i = 0; i < text.size(); ++i)
    if (text[i] == '\n' && i + 1 < text.size()) starts.push_back(i + 1);
  return starts;
}

// Comment and blank lines just above an entry describe that entry: the
// boundary moves up over them (but not above `floor_line`). A '#' indented
// deeper than `max_column` may be block-scalar text and ends the walk.
std::size_t boundary_before(const Source& src, int line, int floor_line, std::size_t max_column) {
  int first = line;
  while (first - 1 > floor_line) {
    const std::size_t begin = src.lines[first - 1];
    std::size_t col = 0;
    while (begin + col < src.text.size() && src.text[begin + col] == ' ') ++col;
    const char c = begin + col < src.text.size() ? src.text[begin + col] : '\n';
    const bool blank = c == '\n' || c == '\r';
    if (!blank && !(c == '#' && col <= max_column)) break;
    --first;
  }
  return src.lines[first];
}

void index_items(Source& src, SourceSection& section) {
  const YAML::Node& list = section.value;
  if (!list.IsSequence() || list.size() == 0 || list.Style() == YAML::EmitterStyle::Flow) return;
  std::vector<SourceItem> items;
  std::vector<int> item_lines;
  std::size_t dash = npos;
  int previous = section.key_line;
  for (const auto& item : list) {
    const YAML::Mark m = item.Mark();
    if (m.line <= previous || m.line >= static_cast<int>(src.lines.size())) return;
    // The entry's first line must read "<spaces>- <content>".
    const std::size_t begin = src.lines[m.line];
    std::size_t d = 0;
    while (begin + d < src.text.size() && src.text[begin + d] == ' ') ++d;
    if (begin + d >= src.text.size() || src.text[begin + d] != '-' || static_cast<std::size_t>(m.column) <= d) return;
    if (dash != npos && d != dash) return;
    dash = d;
    items.push_back({{begin, 0}, item});
    item_lines.push_back(m.line);
    previous = m.line;
  }
  for (std::size_t i = 1; i < items.size(); ++i)
    items[i].span.begin = boundary_before(src, item_lines[i], item_lines[i - 1], dash);
  for (std::size_t i = 0; i < items.size(); ++i)
    items[i].span.end = i + 1 < items.size() ? items[i + 1].span.begin : section.span.end;
  section.header_end = items.front().span.begin;
  section.dash = dash;
  section.items = std::move(items);
  section.has_items = true;
}

// Maps the original text onto its top-level sections and list entries, or
// nothing when its shape is not the plain block layout kubectl writes.
std::optional<Source> index_source(std::string_view text, const YAML::Node& root) {
  if (!root.IsDefined() || !root.IsMap() || root.Style() == YAML::EmitterStyle::Flow) return std::nullopt;
  Source src;
  src.text = text;
  src.lines = line_starts(text);
  int previous = -1;
  for (const auto& kv : root) {
    if (!kv.first.IsScalar()) return std::nullopt;
    const YAML::Mark m = kv.first.Mark();
    if (m.column != 0 || m.line <= previous || m.line >= static_cast<int>(src.lines.size())) return std::nullopt;
    SourceSection section;
    section.key = kv.first.Scalar();
    section.value = kv.second;
    section.key_line = m.line;
    section.span.begin = src.lines[m.line];
    src.sections.push_back(std::move(section));
    previous = m.line;
  }
  if (src.sections.empty()) return std::nullopt;
  src.prefix_end = src.sections.front().span.begin;
  for (std::size_t i = 1; i < src.sections.size(); ++i)
    src.sections[i].span.begin =
        boundary_before(src, src.sections[i].key_line, src.sections[i - 1].key_line, 0);
  for (std::size_t i = 0; i < src.sections.size(); ++i)
    src.sections[i].span.end = i + 1 < src.sections.size() ? src.sections[i + 1].span.begin : text.size();
  for (auto& section : src.sections) index_items(src, section);
  return src;
}

void append_lines(std::string& out, std::string_view text, bool crlf) {
  out.append(text);
  if (!out.empty() && out.back() != '\n') out += crlf ? "\r\n" : "\n";
}

// Emitted text uses "\n"; a file written with "\r\n" keeps its line ends.
std::string with_line_ends(std::string text, bool crlf) {
  if (!crlf) return text;
  std::string converted;
  for (char c : text) {
    if (c == '\n') converted += '\r';
    converted += c;
  }
  return converted;
}

std::string lay_out(Source* src, const YAML::Node& modified) {
  if (!modified.IsMap() || modified.size() == 0) return emit_yaml(modified);
  std::string out;
  const std::size_t first_end = src ? src->text.find('\n') : npos;
  const bool crlf = first_end != npos && first_end > 0 && src->text[first_end - 1] == '\r';
  std::size_t default_dash = 0;  // kubectl writes "- " flush with the key
  if (src) {
    out.append(src->text.substr(0, src->prefix_end));
    for (const auto& s : src->sections)
      if (s.has_items) {
        default_dash = s.dash;
        break;
      }
  }
  for (const auto& kv : modified) {
    const YAML::Node& key = kv.first;
    const YAML::Node& value = kv.second;
    SourceSection* section = nullptr;
    if (src && key.IsScalar())
      for (auto& s : src->sections)
        if (!s.used && s.key == key.Scalar()) {
          section = &s;
          s.used = true;
          break;
        }
    if (section && same_node(section->value, value)) {
      append_lines(out, src->slice(section->span), crlf);
      continue;
    }
    if (key.IsScalar() && value.IsSequence() && value.size() > 0 && value.Style() != YAML::EmitterStyle::Flow) {
      const bool splice = section && section->has_items;
      append_lines(out, splice ? src->slice({section->span.begin, section->header_end})
                               : with_line_ends(emit_key_line(key), crlf),
                   crlf);
      for (const auto& item : value) {
        SourceItem* kept = nullptr;
        if (splice)
          for (auto& candidate : section->items)
            if (!candidate.used && same_node(candidate.node, item)) {
              kept = &candidate;
              candidate.used = true;
              break;
            }
        append_lines(out, kept ? src->slice(kept->span)
                               : with_line_ends(emit_item(item, splice ? section->dash : default_dash), crlf),
                     crlf);
      }
      continue;
    }
    append_lines(out, with_line_ends(emit_pair(key, value), crlf), crlf);
  }
  return out;
}

bool holds(const std::string& text, const YAML::Node& expected) {
  try {
    const std::vector<YAML::Node> docs = YAML::LoadAll(text);
    return docs.size() == 1 && same_node(docs.front(), expected);
  } catch (const std::exception&) {
    return false;
  }
}

}  // namespace

std::string emit_yaml(const YAML::Node& root) {
  YAML::Emitter out;
  emit_node(configure(out), root);
  return finish(out);
}

Result<std::string> lay_out_kubeconfig(const std::string& original_text, const YAML::Node& original,
                                       const YAML::Node& modified) noexcept {
  try {
    if (std::optional<Source> src = index_source(original_text, original)) {
      std::string text = lay_out(&*src, modified);
      if (holds(text, modified)) return text;
    }
    std::string text = lay_out(nullptr, modified);
    if (holds(text, modified)) return text;
    text = emit_yaml(modified);
    if (holds(text, modified)) return text;
    return fail("yaml-cpp cannot write its content back faithfully");
  } catch (const std::exception& e) {
    return fail(std::string("its new content could not be written as YAML (") + e.what() + ")");
  }
}

}  // namespace clusterconnect::kubeconfig
