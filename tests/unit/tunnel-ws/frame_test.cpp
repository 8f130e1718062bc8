#include <catch2/catch.hpp>

#include "protocol/frame.hpp"

using namespace clusterconnect::tunnel;

namespace {
std::span<const std::uint8_t> bytes(const std::vector<std::uint8_t>& v) { return {v.data(), v.size()}; }
std::vector<std::uint8_t> header(std::uint8_t type, std::uint8_t flags, std::uint32_t id, std::uint32_t len) {
  std::vector<std::uint8_t> v;
  encode_header(v, static_cast<FrameType>(type), flags, id, len);
  return v;
}
}  // namespace

TEST_CASE("every frame type round-trips", "[codec]") {
  std::vector<std::uint8_t> m;
  encode_open(m, 1, R"({"a":"b"})");
  encode_open_ack(m, 1);
  std::vector<std::uint8_t> payload(max_data_payload, 0xAB);
  encode_data(m, 3, payload);
  encode_window(m, 0, 12345);
  encode_fin(m, 5);
  encode_rst(m, 7, RstCode::unavailable, "no agent connected for cluster demo");
  std::array<std::uint8_t, 8> opaque{1, 2, 3, 4, 5, 6, 7, 8};
  encode_ping(m, FrameType::ping, opaque);
  encode_ping(m, FrameType::pong, opaque);
  encode_goaway(m, GoawayCode::normal, "bye");

  std::vector<Frame> frames;
  std::size_t off = 0;
  while (off < m.size()) {
    auto r = decode_frame(bytes(m).subspan(off));
    INFO(to_string(r.error));
    REQUIRE(r.error == DecodeError::none);
    frames.push_back(r.frame);
    off += r.consumed;
  }
  REQUIRE(frames.size() == 9);
  Metadata md;
  CHECK(frames[0].type == FrameType::open);
  CHECK(parse_metadata(frames[0].payload, md));
  CHECK(md.at("a") == "b");
  CHECK(frames[1].flags == flag_ack);
  CHECK(frames[2].payload.size() == max_data_payload);
  CHECK(frames[2].stream == 3);
  CHECK(window_increment(frames[3]) == 12345);
  CHECK(frames[4].type == FrameType::fin);
  auto cr = code_reason(frames[5]);
  CHECK(cr.code == static_cast<std::uint32_t>(RstCode::unavailable));
  CHECK(cr.reason == "no agent connected for cluster demo");
  CHECK(frames[6].type == FrameType::ping);
  CHECK(frames[7].payload[7] == 8);
  CHECK(code_reason(frames[8]).reason == "bye");
}

TEST_CASE("the decoder rejects malformed frames precisely", "[codec]") {
  CHECK(decode_frame(bytes(std::vector<std::uint8_t>{2, 0, 0})).error == DecodeError::truncated_header);
  auto h = header(2, 0, 1, 10);
  h.resize(h.size() + 5);
  CHECK(decode_frame(bytes(h)).error == DecodeError::truncated_payload);
  CHECK(decode_frame(bytes(header(10, 0, 1, 0))).error == DecodeError::unknown_type);
  CHECK(decode_frame(bytes(header(0, 0, 1, 0))).error == DecodeError::unknown_type);
  CHECK(decode_frame(bytes(header(2, 0, 1, max_data_payload + 1))).error == DecodeError::oversize);
  CHECK(decode_frame(bytes(header(1, 0, 1, max_metadata_size + 1))).error == DecodeError::oversize);
  CHECK(decode_frame(bytes(header(5, 0, 1, 4 + max_reason_size + 1))).error == DecodeError::oversize);
  CHECK(decode_frame(bytes(header(2, 0, 1, 0))).error == DecodeError::empty_data);
  CHECK(decode_frame(bytes(header(3, 0, 1, 3))).error == DecodeError::bad_length);
  CHECK(decode_frame(bytes(header(6, 0, 0, 4))).error == DecodeError::bad_length);
  CHECK(decode_frame(bytes(header(2, 0x80, 1, 1))).error == DecodeError::bad_flags);
  CHECK(decode_frame(bytes(header(4, 0, 0, 0))).error == DecodeError::bad_stream_id);  // FIN needs a stream
  CHECK(decode_frame(bytes(header(8, 0, 3, 4))).error == DecodeError::bad_stream_id);  // GOAWAY is tunnel-wide
  auto ack_with_payload = header(1, flag_ack, 1, 1);
  ack_with_payload.push_back('x');
  CHECK(decode_frame(bytes(ack_with_payload)).error == DecodeError::bad_length);
  std::vector<std::uint8_t> zero;
  encode_header(zero, FrameType::window, 0, 0, 4);
  zero.insert(zero.end(), {0, 0, 0, 0});
  CHECK(decode_frame(bytes(zero)).error == DecodeError::zero_window);
}

TEST_CASE("OPEN metadata must be a JSON object of strings", "[codec]") {
  Metadata md;
  auto span_of = [](const std::string& s) { return std::span<const std::uint8_t>(reinterpret_cast<const std::uint8_t*>(s.data()), s.size()); };
  CHECK(parse_metadata(span_of(R"({"k":"v","x":"y"})"), md));
  CHECK(md.size() == 2);
  CHECK_FALSE(parse_metadata(span_of(R"({"k":1})"), md));
  CHECK_FALSE(parse_metadata(span_of(R"(["k"])"), md));
  CHECK_FALSE(parse_metadata(span_of("{not json"), md));
  CHECK(parse_metadata({}, md));
  CHECK(md.empty());
  CHECK(serialize_metadata({{"a", "b"}}) == R"({"a":"b"})");
}

TEST_CASE("long reasons are clipped to the limit", "[codec]") {
  std::vector<std::uint8_t> m;
  encode_rst(m, 1, RstCode::internal, std::string(5000, 'x'));
  auto r = decode_frame(bytes(m));
  REQUIRE(r.error == DecodeError::none);
  CHECK(code_reason(r.frame).reason.size() == max_reason_size);
}

TEST_CASE("RENEW and its ACK round-trip", "[codec][renew]") {
  const std::string token = "SharedAccessSignature sr=http%3a%2f%2fh%2fp&sig=abc&se=1&skn=connect";
  std::vector<std::uint8_t> m;
  encode_renew(m, token);
  encode_renew_ack(m, 0, "ignored when accepted");
  encode_renew_ack(m, 403, "token is not valid for this path");
  encode_renew(m, std::string(max_token_size, 't'));
  std::vector<Frame> frames;
  std::size_t off = 0;
  while (off < m.size()) {
    auto r = decode_frame(bytes(m).subspan(off));
    INFO(to_string(r.error));
    REQUIRE(r.error == DecodeError::none);
    frames.push_back(r.frame);
    off += r.consumed;
  }
  REQUIRE(frames.size() == 4);
  CHECK(frames[0].type == FrameType::renew);
  CHECK(std::string(to_string(frames[0].type)) == "RENEW");
  CHECK(frames[0].flags == 0);
  CHECK(frames[0].stream == 0);
  CHECK(std::string(frames[0].payload.begin(), frames[0].payload.end()) == token);
  CHECK(frames[1].flags == flag_ack);
  CHECK(frames[1].payload.empty());
  CHECK(frames[2].flags == flag_ack);
  auto cr = code_reason(frames[2]);
  CHECK(cr.code == 403);
  CHECK(cr.reason == "token is not valid for this path");
  CHECK(frames[3].payload.size() == max_token_size);
}

TEST_CASE("the decoder rejects malformed RENEW frames", "[codec][renew]") {
  auto with_payload = [](std::uint8_t flags, std::uint32_t id, std::size_t n) {
    auto v = header(9, flags, id, static_cast<std::uint32_t>(n));
    v.resize(v.size() + n, 'x');
    return v;
  };
  CHECK(decode_frame(bytes(with_payload(0, 0, max_token_size + 1))).error == DecodeError::oversize);
  CHECK(decode_frame(bytes(with_payload(0, 0, 0))).error == DecodeError::bad_length);  // no token
  CHECK(decode_frame(bytes(with_payload(0, 1, 10))).error == DecodeError::bad_stream_id);
  CHECK(decode_frame(bytes(with_payload(flag_ack, 3, 0))).error == DecodeError::bad_stream_id);
  CHECK(decode_frame(bytes(with_payload(0x2, 0, 10))).error == DecodeError::bad_flags);
  CHECK(decode_frame(bytes(with_payload(flag_ack, 0, 3))).error == DecodeError::bad_length);  // a code is 4 bytes
  CHECK(decode_frame(bytes(with_payload(flag_ack, 0, 4 + max_reason_size + 1))).error == DecodeError::oversize);
  auto truncated = header(9, 0, 0, 100);
  truncated.resize(truncated.size() + 50);
  CHECK(decode_frame(bytes(truncated)).error == DecodeError::truncated_payload);
  std::vector<std::uint8_t> long_reason;
  encode_renew_ack(long_reason, 401, std::string(5000, 'r'));
  auto r = decode_frame(bytes(long_reason));
  REQUIRE(r.error == DecodeError::none);
  CHECK(code_reason(r.frame).reason.size() == max_reason_size);
}
