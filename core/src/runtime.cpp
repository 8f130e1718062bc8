#include "clusterconnect/host/runtime.hpp"

#include <cstdlib>
#include <cstring>

#include <boost/asio/executor_work_guard.hpp>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include "json_log_formatter.hpp"

namespace fs = std::filesystem;

namespace clusterconnect::host {

std::shared_ptr<spdlog::logger> make_logger(const std::string& name, int verbosity, LogFormat format) {
  auto sink = std::make_shared<spdlog::sinks::stderr_color_sink_mt>();
  auto logger = std::make_shared<spdlog::logger>(name, sink);
  if (format == LogFormat::json) {
    logger->set_formatter(std::make_unique<JsonLogFormatter>());
  } else {
    logger->set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%-5l%$ %n: %v");
  }
  logger->set_level(verbosity >= 2 ? spdlog::level::trace : verbosity == 1 ? spdlog::level::debug : spdlog::level::info);
  logger->flush_on(spdlog::level::warn);
  spdlog::set_default_logger(logger);
  return logger;
}

void prescan_logging_flags(int argc, char** argv, int& verbosity, LogFormat& format) {
  for (int i = 1; i < argc; ++i) {
    std::string_view a(argv[i]);
    if (a == "--") break;
    if (a == "--verbose") ++verbosity;
    else if (a.size() >= 2 && a[0] == '-' && a[1] == 'v' && a.find_first_not_of('v', 1) == std::string_view::npos)
      verbosity += static_cast<int>(a.size() - 1);
    else if (a == "--log-format=json" || (a == "--log-format" && i + 1 < argc && std::strcmp(argv[i + 1], "json") == 0))
      format = LogFormat::json;
  }
}

struct Runtime::Guard {
  explicit Guard(asio::io_context& io) : work(io.get_executor()) {}
  asio::executor_work_guard<asio::io_context::executor_type> work;
};

Runtime::Runtime(std::shared_ptr<spdlog::logger> logger, unsigned threads)
    : io_(static_cast<int>(threads ? threads : 1)), threads_wanted_(threads ? threads : 1), logger_(std::move(logger)) {}

Runtime::~Runtime() { stop(); }

namespace {
fs::path xdg(const char* var, const char* fallback) {
  if (const char* v = std::getenv(var); v && *v) return fs::path(v) / "connectedk8s";
  const char* home = std::getenv("HOME");
  return fs::path(home ? home : "/") / fallback / "connectedk8s";
}
}  // namespace

fs::path Runtime::config_dir() const { return xdg("XDG_CONFIG_HOME", ".config"); }
fs::path Runtime::data_dir() const { return xdg("XDG_DATA_HOME", ".local/share"); }
fs::path Runtime::cache_dir() const { return xdg("XDG_CACHE_HOME", ".cache"); }

void Runtime::load_plugins(PluginSearch search) {
  for (const auto& dir : plugin_search_path(search)) loader_.load_directory(dir, *this);
  for (const auto& r : loader_.rejections()) logger_->warn("module {} not loaded: {}", r.path, r.reason);
}

void Runtime::start() {
  if (!threads_.empty()) return;
  guard_ = std::make_unique<Guard>(io_);
  for (unsigned i = 0; i < threads_wanted_; ++i) threads_.emplace_back([this] { io_.run(); });
}

void Runtime::stop() noexcept {
  guard_.reset();
  io_.stop();
  for (auto& t : threads_)
    if (t.joinable()) t.join();
  threads_.clear();
}

}  // namespace clusterconnect::host
