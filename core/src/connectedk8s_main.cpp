// connectedk8s: the host executable. Loads modules, builds the CLI from the
// host's own commands and the modules' command capabilities, runs one.

#include <cstdio>
#include <exception>
#include <string>
#include <string_view>

#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include "clusterconnect/command.hpp"
#include "clusterconnect/host/runtime.hpp"
#include "clusterconnect/version.hpp"
#include "plugin_commands.hpp"

using namespace clusterconnect;

namespace {

// The first word that is not one of the host's own options: the command the
// user asked for, or empty.
std::string first_command_word(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    std::string_view a = argv[i];
    if (a == "--log-format") {
      ++i;
      continue;
    }
    if (a.empty() || a[0] == '-') continue;
    return std::string(a);
  }
  return {};
}

bool has_command(CLI::App& app, const std::string& word) {
  for (const CLI::App* sub : app.get_subcommands({}))
    if (sub->check_name(word)) return true;
  return false;
}

}  // namespace

int main(int argc, char** argv) try {
  int verbosity = 0;
  host::LogFormat format = host::LogFormat::text;
  host::prescan_logging_flags(argc, argv, verbosity, format);
  auto logger = host::make_logger("connectedk8s", verbosity, format);

  host::Runtime runtime(logger, 1);
  runtime.load_plugins(host::PluginSearch::user_dirs);  // the CLI also loads user-installed modules

  CLI::App app{"connectedk8s: kubectl access to clusters that accept no inbound connection", "connectedk8s"};
  app.set_version_flag("--version", std::string("connectedk8s ") + CLUSTERCONNECT_VERSION);
  int verbose_count = 0;
  app.add_flag("-v,--verbose", verbose_count, "More log output (repeat for trace)");
  std::string log_format = "text";
  app.add_option("--log-format", log_format, "Log format: text or json")->check(CLI::IsMember({"text", "json"}));
  app.require_subcommand(1);

  host::PluginCommands plugin_cmds(app, runtime);

  struct ModuleCommand {
    std::shared_ptr<CommandCapability> capability;
    CLI::App* sub;
  };
  std::vector<ModuleCommand> commands;
  for (const auto& m : runtime.loader().modules()) {
    for (const auto& cap : m.capabilities) {
      if (cap.rfind("command:", 0) != 0) continue;
      auto cmd = runtime.capabilities().command(cap.substr(8));
      if (!cmd) continue;
      if (CLI::App* sub = cmd->add_to(app)) commands.push_back({cmd, sub});
    }
  }

  if (auto word = first_command_word(argc, argv); !word.empty() && !has_command(app, word)) {
    std::fprintf(stderr,
                 "connectedk8s: '%s' is not a command here. Commands come from modules; none of the loaded ones "
                 "provides it (for 'proxy', the proxy module). 'connectedk8s plugin list' shows the modules found "
                 "and why any was refused.\n",
                 word.c_str());
    return 2;
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }

  if (int rc = plugin_cmds.run(); rc >= 0) return rc;
  for (auto& c : commands) {
    if (!*c.sub) continue;
    runtime.start();
    int rc = c.capability->run();
    runtime.stop();
    return rc;
  }
  std::fprintf(stderr, "connectedk8s: no command given; see 'connectedk8s --help'\n");
  return 2;
} catch (const std::exception& e) {
  std::fprintf(stderr, "connectedk8s: %s\n", e.what());
  return 1;
}
