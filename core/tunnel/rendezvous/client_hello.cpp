#include "rendezvous/client_hello.hpp"

#include <array>
#include <vector>

#include <openssl/rand.h>

namespace clusterconnect::tunnel::rendezvous {

namespace {

constexpr std::uint8_t content_handshake = 22;
constexpr std::uint8_t handshake_client_hello = 1;
constexpr std::size_t record_header = 5;
constexpr std::size_t max_record = 16 * 1024;  // TLSPlaintext.length, RFC 8446 §5.1
constexpr std::size_t max_records = 32;         // real clients use one, two with large key shares
constexpr std::uint16_t ext_server_name = 0;
constexpr std::uint8_t name_type_host = 0;

HelloPeek invalid(std::string why) {
  HelloPeek p;
  p.state = HelloPeek::State::invalid;
  p.error = std::move(why);
  return p;
}

// A bounds-checked reader over one handshake message.
class Reader {
 public:
  explicit Reader(std::span<const std::uint8_t> b) : b_(b) {}
  bool u8(std::size_t& v) {
    if (left() < 1) return false;
    v = b_[at_++];
    return true;
  }
  bool u16(std::size_t& v) {
    if (left() < 2) return false;
    v = std::size_t{b_[at_]} << 8 | b_[at_ + 1];
    at_ += 2;
    return true;
  }
  bool bytes(std::size_t n, std::span<const std::uint8_t>& out) {
    if (left() < n) return false;
    out = b_.subspan(at_, n);
    at_ += n;
    return true;
  }
  bool skip(std::size_t n) {
    std::span<const std::uint8_t> ignored;
    return bytes(n, ignored);
  }
  std::size_t left() const { return b_.size() - at_; }

 private:
  std::span<const std::uint8_t> b_;
  std::size_t at_ = 0;
};

// RFC 6066 §3: a DNS host name, ASCII, no trailing dot. Letters, digits,
// '-', '.' and '_' only: nothing a log line or a lookup could misread.
bool plausible_host_name(std::span<const std::uint8_t> name) {
  if (name.empty() || name.size() > 255) return false;
  for (auto c : name) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
                    c == '.' || c == '_';
    if (!ok) return false;
  }
  return true;
}

HelloPeek parse_server_name(std::span<const std::uint8_t> data, HelloPeek& done) {
  Reader r(data);
  std::size_t list = 0;
  if (!r.u16(list) || list != r.left() || list == 0) return invalid("malformed server_name extension");
  bool have_host = false;
  while (r.left() > 0) {
    std::size_t type = 0, len = 0;
    std::span<const std::uint8_t> name;
    if (!r.u8(type) || !r.u16(len) || !r.bytes(len, name)) return invalid("malformed server_name extension");
    if (type != name_type_host) continue;  // unknown name types are skipped (RFC 6066 §3)
    if (have_host) return invalid("server_name names more than one host");
    if (!plausible_host_name(name)) return invalid("server_name is not a host name");
    have_host = true;
    done.server_name.assign(name.begin(), name.end());
  }
  return done;
}

HelloPeek parse_client_hello_body(std::span<const std::uint8_t> body) {
  Reader r(body);
  std::size_t major = 0, minor = 0, len = 0;
  if (!r.u8(major) || !r.u8(minor)) return invalid("truncated ClientHello");
  if (major != 3 || minor < 1) return invalid("ClientHello of an unsupported protocol version");
  if (!r.skip(32)) return invalid("truncated ClientHello (random)");
  if (!r.u8(len) || len > 32 || !r.skip(len)) return invalid("malformed ClientHello session id");
  if (!r.u16(len) || len < 2 || len % 2 != 0 || !r.skip(len)) return invalid("malformed ClientHello cipher suites");
  if (!r.u8(len) || len < 1 || !r.skip(len)) return invalid("malformed ClientHello compression methods");
  HelloPeek done;
  done.state = HelloPeek::State::complete;
  if (r.left() == 0) return done;  // no extensions at all: no server name
  if (!r.u16(len) || len != r.left()) return invalid("malformed ClientHello extensions");
  std::vector<std::uint16_t> seen;
  while (r.left() > 0) {
    std::size_t type = 0, ext_len = 0;
    std::span<const std::uint8_t> data;
    if (!r.u16(type) || !r.u16(ext_len) || !r.bytes(ext_len, data)) return invalid("malformed ClientHello extension");
    for (auto t : seen)
      if (t == type) return invalid("ClientHello repeats extension " + std::to_string(type));
    seen.push_back(static_cast<std::uint16_t>(type));
    if (type == ext_server_name) {
      auto sn = parse_server_name(data, done);
      if (sn.state == HelloPeek::State::invalid) return sn;
    }
  }
  return done;
}

bool is_hex_digit(char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }

char lower(char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; }

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (lower(a[i]) != lower(b[i])) return false;
  return true;
}

}  // namespace

HelloPeek peek_client_hello(std::span<const std::uint8_t> bytes, std::size_t limit) {
  // The handshake layer's bytes, gathered from as many records as it takes.
  std::vector<std::uint8_t> hs;
  std::size_t at = 0, records = 0;
  while (at < bytes.size()) {
    const std::size_t avail = bytes.size() - at;
    // Judge a record header from its first byte on: a plain-HTTP request or
    // a stray protocol is refused at once, not after five bytes.
    if (bytes[at] != content_handshake)
      return invalid(records == 0 ? "not a TLS handshake (first byte " + std::to_string(bytes[at]) + ")"
                                  : "a non-handshake TLS record before the ClientHello was complete");
    if (avail >= 2 && bytes[at + 1] != 3) return invalid("not a TLS record (version major " + std::to_string(bytes[at + 1]) + ")");
    if (avail < record_header) return {};
    const std::size_t len = std::size_t{bytes[at + 3]} << 8 | bytes[at + 4];
    if (len == 0) return invalid("an empty TLS handshake record");
    if (len > max_record) return invalid("a TLS record longer than 16 KiB");
    if (++records > max_records) return invalid("a ClientHello split into more than 32 records");
    const std::size_t take = std::min(len, avail - record_header);
    hs.insert(hs.end(), bytes.begin() + static_cast<std::ptrdiff_t>(at + record_header),
              bytes.begin() + static_cast<std::ptrdiff_t>(at + record_header + take));
    if (!hs.empty() && hs[0] != handshake_client_hello) return invalid("the first handshake message is not a ClientHello");
    if (hs.size() >= 4) {
      const std::size_t msg = std::size_t{hs[1]} << 16 | std::size_t{hs[2]} << 8 | hs[3];
      if (msg > limit) return invalid("a ClientHello of " + std::to_string(msg) + " bytes (the limit is " + std::to_string(limit) + ")");
      if (hs.size() >= 4 + msg) return parse_client_hello_body(std::span<const std::uint8_t>(hs).subspan(4, msg));
    }
    if (take < len) return {};  // the rest of this record is still on its way
    at += record_header + len;
  }
  return {};
}

std::string make_ticket() {
  std::array<unsigned char, ticket_length / 2> raw{};
  if (RAND_bytes(raw.data(), static_cast<int>(raw.size())) != 1) return {};
  static constexpr char hex[] = "0123456789abcdef";
  std::string out;
  out.reserve(ticket_length);
  for (auto b : raw) {
    out.push_back(hex[b >> 4]);
    out.push_back(hex[b & 0x0f]);
  }
  return out;
}

bool is_ticket(std::string_view s) noexcept {
  if (s.size() != ticket_length) return false;
  for (char c : s)
    if (!is_hex_digit(c)) return false;
  return true;
}

std::string ticket_server_name(std::string_view ticket, std::string_view relay_host) {
  std::string out(ticket);
  out.push_back('.');
  out.append(relay_host);
  return out;
}

std::optional<std::string> ticket_from_server_name(std::string_view server_name, std::string_view relay_host) {
  if (!server_name.empty() && server_name.back() == '.') server_name.remove_suffix(1);
  if (!relay_host.empty() && relay_host.back() == '.') relay_host.remove_suffix(1);
  const auto dot = server_name.find('.');
  if (dot == std::string_view::npos) return std::nullopt;
  const auto label = server_name.substr(0, dot);
  if (!is_ticket(label) || relay_host.empty() || !iequals(server_name.substr(dot + 1), relay_host)) return std::nullopt;
  std::string ticket(label);
  for (auto& c : ticket) c = lower(c);
  return ticket;
}

}  // namespace clusterconnect::tunnel::rendezvous
