#include "json_log_formatter.hpp"

#include <string>

#include <nlohmann/json.hpp>
#include <spdlog/common.h>

#include "clusterconnect/timestamp.hpp"

namespace clusterconnect::host {

void JsonLogFormatter::format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) {
  std::string stamp;
  append_utc_timestamp(stamp, msg.time);
  nlohmann::json line{{"time", stamp},
                      {"level", std::string(spdlog::level::to_string_view(msg.level).data(),
                                            spdlog::level::to_string_view(msg.level).size())},
                      {"logger", std::string(msg.logger_name.data(), msg.logger_name.size())},
                      {"msg", std::string(msg.payload.data(), msg.payload.size())}};
  auto text = line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  text += '\n';
  dest.append(text.data(), text.data() + text.size());
}

}  // namespace clusterconnect::host
