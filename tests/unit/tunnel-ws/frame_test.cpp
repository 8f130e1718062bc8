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
  CHECK(decode_frame(bytes(header(9, 0, 1, 0))).error == DecodeError::unknown_type);
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
