#include "clusterconnect/host/config_file.hpp"

#include <cstdlib>
#include <sstream>

#include <yaml-cpp/yaml.h>

namespace clusterconnect::host {
namespace {

constexpr std::size_t max_config_bytes = 1u << 20;

void flatten(const YAML::Node& node, std::vector<std::string>& parents, std::vector<CLI::ConfigItem>& out) {
  for (const auto& kv : node) {
    auto key = kv.first.as<std::string>();
    const YAML::Node& v = kv.second;
    if (v.IsMap()) {
      parents.push_back(key);
      flatten(v, parents, out);
      parents.pop_back();
      continue;
    }
    CLI::ConfigItem item;
    item.parents = parents;
    item.name = key;
    if (v.IsSequence()) {
      for (const auto& e : v) item.inputs.push_back(e.as<std::string>());
    } else if (v.IsScalar()) {
      item.inputs.push_back(v.as<std::string>());
    } else {
      continue;  // null: leave the default
    }
    out.push_back(std::move(item));
  }
}

}  // namespace

std::string YamlConfig::to_config(const CLI::App* app, bool default_also, bool, std::string) const {
  YAML::Emitter out;
  out << YAML::BeginMap;
  for (const CLI::Option* opt : app->get_options()) {
    if (opt->get_lnames().empty() || !opt->get_configurable()) continue;
    auto name = opt->get_lnames().front();
    auto results = opt->results();
    if (results.empty() && default_also && !opt->get_default_str().empty()) results.push_back(opt->get_default_str());
    if (results.empty()) continue;
    out << YAML::Key << name << YAML::Value;
    if (results.size() == 1) out << results.front();
    else out << results;
  }
  out << YAML::EndMap;
  return out.c_str();
}

std::vector<CLI::ConfigItem> YamlConfig::from_config(std::istream& input) const {
  std::string text;
  char buf[8192];
  while (input.read(buf, sizeof buf) || input.gcount() > 0) {
    text.append(buf, static_cast<std::size_t>(input.gcount()));
    if (text.size() > max_config_bytes) throw CLI::ConfigError("config file is larger than 1 MiB");
  }
  std::vector<CLI::ConfigItem> items;
  try {
    YAML::Node root = YAML::Load(text);
    if (!root || root.IsNull()) return items;
    if (!root.IsMap()) throw CLI::ConfigError("config file must be a map of option names to values");
    std::vector<std::string> parents;
    flatten(root, parents, items);
    if (app_) {
      std::erase_if(items, [this](const CLI::ConfigItem& item) {
        if (!item.parents.empty()) return false;
        const CLI::Option* opt = app_->get_option_no_throw("--" + item.name);
        if (!opt || opt->get_envname().empty()) return false;
        const char* env = std::getenv(opt->get_envname().c_str());
        return env != nullptr && *env != '\0';
      });
    }
  } catch (const YAML::Exception& e) {
    throw CLI::ConfigError(std::string("config file is not valid YAML/JSON: ") + e.what());
  }
  return items;
}

void add_config_option(CLI::App& app, const std::string& description) {
  app.config_formatter(std::make_shared<YamlConfig>(&app));
  app.set_config("--config", "", description);
}

}  // namespace clusterconnect::host
