#include "frame.hpp"

#include <nlohmann/json.hpp>

namespace clusterconnect::tunnel {

namespace {

std::uint32_t load_u32(const std::uint8_t* p) noexcept {
  return (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) | std::uint32_t{p[3]};
}

void store_u32(std::vector<std::uint8_t>& out, std::uint32_t v) {
  out.push_back(static_cast<std::uint8_t>(v >> 24));
  out.push_back(static_cast<std::uint8_t>(v >> 16));
  out.push_back(static_cast<std::uint8_t>(v >> 8));
  out.push_back(static_cast<std::uint8_t>(v));
}

// Reasons are cut to the limit on a UTF-8 character boundary so a long
// message never makes an invalid frame.
std::string_view clip_reason(std::string_view reason) noexcept {
  if (reason.size() <= max_reason_size) return reason;
  std::size_t n = max_reason_size;
  while (n > 0 && (static_cast<unsigned char>(reason[n]) & 0xC0) == 0x80) --n;
  return reason.substr(0, n);
}

}  // namespace

const char* to_string(FrameType t) noexcept {
  switch (t) {
    case FrameType::open: return "OPEN";
    case FrameType::data: return "DATA";
    case FrameType::window: return "WINDOW";
    case FrameType::fin: return "FIN";
    case FrameType::rst: return "RST";
    case FrameType::ping: return "PING";
    case FrameType::pong: return "PONG";
    case FrameType::goaway: return "GOAWAY";
    case FrameType::renew: return "RENEW";
  }
  return "UNKNOWN";
}

const char* to_string(DecodeError e) noexcept {
  switch (e) {
    case DecodeError::none: return "no error";
    case DecodeError::truncated_header: return "truncated frame header";
    case DecodeError::truncated_payload: return "truncated frame payload";
    case DecodeError::unknown_type: return "unknown frame type";
    case DecodeError::bad_flags: return "unknown frame flags";
    case DecodeError::oversize: return "frame payload over the limit";
    case DecodeError::bad_length: return "frame payload length invalid for its type";
    case DecodeError::empty_data: return "empty DATA frame";
    case DecodeError::zero_window: return "WINDOW increment of zero";
    case DecodeError::bad_stream_id: return "stream id invalid for the frame type";
  }
  return "unknown decode error";
}

DecodeResult decode_frame(std::span<const std::uint8_t> bytes) noexcept {
  DecodeResult r;
  if (bytes.size() < frame_header_size) {
    r.error = DecodeError::truncated_header;
    return r;
  }
  const std::uint8_t raw_type = bytes[0];
  const std::uint8_t flags = bytes[1];
  const StreamId id = load_u32(bytes.data() + 2);
  const std::uint32_t length = load_u32(bytes.data() + 6);
  if (raw_type < 1 || raw_type > 9) {
    r.error = DecodeError::unknown_type;
    return r;
  }
  const auto type = static_cast<FrameType>(raw_type);
  // Limits are checked before the truncation check so an absurd length is
  // reported as what it is, not as a short read.
  std::size_t max = 0, min = 0;
  bool needs_stream = true;
  switch (type) {
    case FrameType::open: max = max_metadata_size; break;
    case FrameType::data: min = 1; max = max_data_payload; break;
    case FrameType::window: min = max = 4; needs_stream = false; break;
    case FrameType::fin: max = 0; break;
    case FrameType::rst: min = 4; max = 4 + max_reason_size; break;
    case FrameType::ping:
    case FrameType::pong: min = max = 8; needs_stream = false; break;
    case FrameType::goaway: min = 4; max = 4 + max_reason_size; needs_stream = false; break;
    case FrameType::renew:
      // RENEW: the token; RENEW|ACK: empty (accepted) or code + reason.
      if (flags & flag_ack) {
        max = 4 + max_reason_size;
      } else {
        min = 1;
        max = max_token_size;
      }
      needs_stream = false;
      break;
  }
  if (flags != 0 && !((type == FrameType::open || type == FrameType::renew) && flags == flag_ack)) {
    r.error = DecodeError::bad_flags;
    return r;
  }
  if (length > max) {
    r.error = (min == max) ? DecodeError::bad_length : DecodeError::oversize;
    return r;
  }
  if (length < min) {
    r.error = type == FrameType::data ? DecodeError::empty_data : DecodeError::bad_length;
    return r;
  }
  if (type == FrameType::open && (flags & flag_ack) && length != 0) {
    r.error = DecodeError::bad_length;
    return r;
  }
  if (type == FrameType::renew && (flags & flag_ack) && length != 0 && length < 4) {
    r.error = DecodeError::bad_length;
    return r;
  }
  const bool stream_ok = type == FrameType::window ? true
                         : needs_stream           ? id != 0
                                                  : id == 0;
  if (!stream_ok) {
    r.error = DecodeError::bad_stream_id;
    return r;
  }
  if (bytes.size() - frame_header_size < length) {
    r.error = DecodeError::truncated_payload;
    return r;
  }
  r.frame.type = type;
  r.frame.flags = flags;
  r.frame.stream = id;
  r.frame.payload = bytes.subspan(frame_header_size, length);
  if (type == FrameType::window && window_increment(r.frame) == 0) {
    r.error = DecodeError::zero_window;
    return r;
  }
  r.consumed = frame_header_size + length;
  return r;
}

std::uint32_t window_increment(const Frame& f) noexcept { return load_u32(f.payload.data()); }

CodeReason code_reason(const Frame& f) {
  CodeReason c;
  c.code = load_u32(f.payload.data());
  c.reason.assign(reinterpret_cast<const char*>(f.payload.data()) + 4, f.payload.size() - 4);
  return c;
}

bool parse_metadata(std::span<const std::uint8_t> payload, Metadata& out) {
  out.clear();
  if (payload.empty()) return true;
  auto j = nlohmann::json::parse(payload.begin(), payload.end(), nullptr, false);
  if (j.is_discarded() || !j.is_object()) return false;
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (!it.value().is_string()) return false;
    out.emplace(it.key(), it.value().get<std::string>());
  }
  return true;
}

std::string serialize_metadata(const Metadata& m) {
  nlohmann::json j = nlohmann::json::object();
  for (const auto& [k, v] : m) j[k] = v;
  // Invalid UTF-8 is replaced rather than thrown on: metadata is advisory.
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

void encode_header(std::vector<std::uint8_t>& out, FrameType type, std::uint8_t flags, StreamId id, std::uint32_t length) {
  out.push_back(static_cast<std::uint8_t>(type));
  out.push_back(flags);
  store_u32(out, id);
  store_u32(out, length);
}

void encode_open(std::vector<std::uint8_t>& out, StreamId id, std::string_view metadata_json) {
  encode_header(out, FrameType::open, 0, id, static_cast<std::uint32_t>(metadata_json.size()));
  out.insert(out.end(), metadata_json.begin(), metadata_json.end());
}

void encode_open_ack(std::vector<std::uint8_t>& out, StreamId id) { encode_header(out, FrameType::open, flag_ack, id, 0); }

void encode_data(std::vector<std::uint8_t>& out, StreamId id, std::span<const std::uint8_t> bytes) {
  encode_header(out, FrameType::data, 0, id, static_cast<std::uint32_t>(bytes.size()));
  out.insert(out.end(), bytes.begin(), bytes.end());
}

void encode_window(std::vector<std::uint8_t>& out, StreamId id, std::uint32_t increment) {
  encode_header(out, FrameType::window, 0, id, 4);
  store_u32(out, increment);
}

void encode_fin(std::vector<std::uint8_t>& out, StreamId id) { encode_header(out, FrameType::fin, 0, id, 0); }

void encode_rst(std::vector<std::uint8_t>& out, StreamId id, RstCode code, std::string_view reason) {
  reason = clip_reason(reason);
  encode_header(out, FrameType::rst, 0, id, static_cast<std::uint32_t>(4 + reason.size()));
  store_u32(out, static_cast<std::uint32_t>(code));
  out.insert(out.end(), reason.begin(), reason.end());
}

void encode_ping(std::vector<std::uint8_t>& out, FrameType ping_or_pong, std::span<const std::uint8_t, 8> opaque) {
  encode_header(out, ping_or_pong, 0, 0, 8);
  out.insert(out.end(), opaque.begin(), opaque.end());
}

void encode_goaway(std::vector<std::uint8_t>& out, GoawayCode code, std::string_view reason) {
  reason = clip_reason(reason);
  encode_header(out, FrameType::goaway, 0, 0, static_cast<std::uint32_t>(4 + reason.size()));
  store_u32(out, static_cast<std::uint32_t>(code));
  out.insert(out.end(), reason.begin(), reason.end());
}

void encode_renew(std::vector<std::uint8_t>& out, std::string_view token) {
  encode_header(out, FrameType::renew, 0, 0, static_cast<std::uint32_t>(token.size()));
  out.insert(out.end(), token.begin(), token.end());
}

void encode_renew_ack(std::vector<std::uint8_t>& out, std::uint32_t code, std::string_view reason) {
  if (code == 0) {
    encode_header(out, FrameType::renew, flag_ack, 0, 0);
    return;
  }
  reason = clip_reason(reason);
  encode_header(out, FrameType::renew, flag_ack, 0, static_cast<std::uint32_t>(4 + reason.size()));
  store_u32(out, code);
  out.insert(out.end(), reason.begin(), reason.end());
}

}  // namespace clusterconnect::tunnel
