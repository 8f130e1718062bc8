#include "json_log_formatter.hpp"

#include <chrono>
#include <ctime>

#include <nlohmann/json.hpp>
#include <spdlog/common.h>

namespace clusterconnect::host {

void JsonLogFormatter::format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) {
  using namespace std::chrono;
  auto t = system_clock::to_time_t(msg.time);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char stamp[96];  // room for any int the format can print (-Wformat-truncation)
  auto ms = duration_cast<milliseconds>(msg.time.time_since_epoch()).count() % 1000;
  std::snprintf(stamp, sizeof stamp, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
                tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<int>(ms));
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
