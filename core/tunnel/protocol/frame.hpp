#pragma once
// Frame codec of the tunnel protocol (docs/tunnel-protocol.md §2). Pure: no
// Asio, no allocation beyond the caller's buffers, precise errors.

#include <cstddef>
#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace clusterconnect::tunnel {

using StreamId = std::uint32_t;
using Metadata = std::map<std::string, std::string>;

// OPEN metadata the relay sets on every stream it hands to an agent, over
// anything the client sent: the cluster the stream was authorised for.
inline constexpr std::string_view metadata_cluster = "cluster";
inline constexpr std::string_view metadata_hybrid_connection = "hybrid_connection";

enum class FrameType : std::uint8_t {
  open = 1,
  data = 2,
  window = 3,
  fin = 4,
  rst = 5,
  ping = 6,
  pong = 7,
  goaway = 8,
  renew = 9,
};

inline constexpr std::uint8_t flag_ack = 0x1;

inline constexpr std::size_t frame_header_size = 10;
inline constexpr std::size_t max_data_payload = 64 * 1024;
inline constexpr std::size_t max_metadata_size = 4 * 1024;
inline constexpr std::size_t max_reason_size = 1024;
inline constexpr std::size_t max_token_size = 4 * 1024;
inline constexpr std::size_t max_message_size = 1024 * 1024;
inline constexpr std::uint32_t max_window = 0x7fffffff;
inline constexpr std::uint32_t default_stream_window = 256 * 1024;
inline constexpr std::uint32_t default_tunnel_window = 16 * 1024 * 1024;
// The window the proxy and the agent give each stream they receive on (granted
// by a WINDOW_UPDATE at stream open): with a quarter of it acknowledged at a
// time, a bulk download costs four WINDOW_UPDATEs per MiB instead of sixteen,
// and each one is a wake-up at every hop on the way back.
inline constexpr std::uint32_t bulk_stream_window = 1024 * 1024;

enum class RstCode : std::uint32_t {
  protocol_error = 1,
  refused = 2,
  unavailable = 3,
  cancel = 4,
  internal = 5,
  open_timeout = 6,
  tunnel_closed = 7,
};

enum class GoawayCode : std::uint32_t {
  normal = 0,
  protocol_error = 1,
  keepalive_timeout = 2,
};

const char* to_string(FrameType t) noexcept;

// A decoded frame. `payload` points into the decoded message.
struct Frame {
  FrameType type{};
  std::uint8_t flags = 0;
  StreamId stream = 0;
  std::span<const std::uint8_t> payload;
};

enum class DecodeError {
  none,
  truncated_header,
  truncated_payload,
  unknown_type,
  bad_flags,
  oversize,
  bad_length,
  empty_data,
  zero_window,
  bad_stream_id,
};

const char* to_string(DecodeError e) noexcept;

struct DecodeResult {
  DecodeError error = DecodeError::none;
  std::size_t consumed = 0;  // bytes of the frame, valid when error == none
  Frame frame;
};

// Decodes the frame at the start of `bytes` and checks it against the per-type
// limits of §2. Session-level rules (credit, ids) are checked by the session.
DecodeResult decode_frame(std::span<const std::uint8_t> bytes) noexcept;

// Typed payload readers; precondition: the frame passed decode_frame.
std::uint32_t window_increment(const Frame& f) noexcept;
struct CodeReason {
  std::uint32_t code = 0;
  std::string reason;
};
CodeReason code_reason(const Frame& f);

// OPEN metadata: a JSON object whose values are all strings. Returns false on
// anything else (the caller treats that as a protocol error).
bool parse_metadata(std::span<const std::uint8_t> payload, Metadata& out);
std::string serialize_metadata(const Metadata& m);

// Encoders append one whole frame to `out`.
void encode_header(std::vector<std::uint8_t>& out, FrameType type, std::uint8_t flags, StreamId id, std::uint32_t length);
void encode_open(std::vector<std::uint8_t>& out, StreamId id, std::string_view metadata_json);
void encode_open_ack(std::vector<std::uint8_t>& out, StreamId id);
void encode_data(std::vector<std::uint8_t>& out, StreamId id, std::span<const std::uint8_t> bytes);
void encode_window(std::vector<std::uint8_t>& out, StreamId id, std::uint32_t increment);
void encode_fin(std::vector<std::uint8_t>& out, StreamId id);
void encode_rst(std::vector<std::uint8_t>& out, StreamId id, RstCode code, std::string_view reason);
void encode_ping(std::vector<std::uint8_t>& out, FrameType ping_or_pong, std::span<const std::uint8_t, 8> opaque);
void encode_goaway(std::vector<std::uint8_t>& out, GoawayCode code, std::string_view reason);
// RENEW carries a token (1..max_token_size bytes, the caller checks). Its
// answer, RENEW|ACK, is empty when the token was accepted, else a non-zero
// code and a reason.
void encode_renew(std::vector<std::uint8_t>& out, std::string_view token);
void encode_renew_ack(std::vector<std::uint8_t>& out, std::uint32_t code, std::string_view reason);

}  // namespace clusterconnect::tunnel
