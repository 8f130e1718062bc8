// libFuzzer target: the tunnel frame decoder and OPEN metadata parser must
// reject or accept any input without crashing, and what they accept must
// re-encode to the same bytes.

#include <cstdint>
#include <cstdlib>
#include <vector>

#include "protocol/frame.hpp"

using namespace clusterconnect::tunnel;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::span<const std::uint8_t> in(data, size);
  std::size_t off = 0;
  while (off < in.size()) {
    DecodeResult r = decode_frame(in.subspan(off));
    if (r.error != DecodeError::none) break;
    const Frame& f = r.frame;
    if (r.consumed != frame_header_size + f.payload.size()) std::abort();
    std::vector<std::uint8_t> again;
    encode_header(again, f.type, f.flags, f.stream, static_cast<std::uint32_t>(f.payload.size()));
    again.insert(again.end(), f.payload.begin(), f.payload.end());
    if (again.size() != r.consumed || !std::equal(again.begin(), again.end(), in.begin() + static_cast<std::ptrdiff_t>(off)))
      std::abort();
    switch (f.type) {
      case FrameType::open: {
        Metadata md;
        if (parse_metadata(f.payload, md)) (void)serialize_metadata(md);
        break;
      }
      case FrameType::window:
        if (window_increment(f) == 0) std::abort();
        break;
      case FrameType::rst:
      case FrameType::goaway:
        (void)code_reason(f);
        break;
      default: break;
    }
    off += r.consumed;
  }
  return 0;
}
