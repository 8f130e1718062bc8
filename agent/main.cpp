// clusterconnect-agent: runs in the cluster, dials out to the relay,
// authenticates callers and impersonates them to the API server.

#include <cstdio>
#include <exception>

#include <CLI/CLI.hpp>

#include "clusterconnect/host/runtime.hpp"
#include "clusterconnect/version.hpp"

using namespace clusterconnect;

int main(int argc, char** argv) try {
  int verbosity = 0;
  host::LogFormat format = host::LogFormat::text;
  host::prescan_logging_flags(argc, argv, verbosity, format);
  auto logger = host::make_logger("agent", verbosity, format);
  CLI::App app{"clusterconnect-agent: connects a cluster to a relay", "clusterconnect-agent"};
  app.set_version_flag("--version", std::string("clusterconnect-agent ") + CLUSTERCONNECT_VERSION);
  int verbose_count = 0;
  app.add_flag("-v,--verbose", verbose_count, "More log output (repeat for trace)");
  std::string log_format = "text";
  app.add_option("--log-format", log_format, "Log format: text or json")->check(CLI::IsMember({"text", "json"}));
  CLI11_PARSE(app, argc, argv);
  host::Runtime runtime(logger, 2);
  runtime.load_plugins();
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "clusterconnect-agent: %s\n", e.what());
  return 1;
}
