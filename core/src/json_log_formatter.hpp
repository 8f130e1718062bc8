#pragma once
// One JSON object per log line: {"time","level","logger","msg"}.

#include <spdlog/formatter.h>
#include <spdlog/details/log_msg.h>

namespace clusterconnect::host {

class JsonLogFormatter final : public spdlog::formatter {
 public:
  void format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) override;
  std::unique_ptr<spdlog::formatter> clone() const override { return std::make_unique<JsonLogFormatter>(); }
};

}  // namespace clusterconnect::host
