#include "cluster_commands.hpp"

#include <cstdio>
#include <cstdlib>
#include <exception>

#include <yaml-cpp/yaml.h>
#include <CLI/CLI.hpp>

#include "agent_manifests.hpp"
#include "connected_clusters.hpp"
#include "kube_client.hpp"

namespace clusterconnect::onboarding {
namespace {

int failed(const char* verb, const std::string& message) {
  std::fprintf(stderr, "%s: %s\n", verb, message.c_str());
  return 1;
}

std::string table(const nlohmann::json& clusters) {
  auto cell = [](const nlohmann::json& r, const char* a, const char* b = nullptr) {
    const nlohmann::json& v =
        b ? (r.contains(a) && r[a].is_object() ? r[a].value(b, nlohmann::json()) : nlohmann::json())
          : r.value(a, nlohmann::json());
    return v.is_string() ? v.get<std::string>() : std::string("-");
  };
  auto group = [](const nlohmann::json& r) {
    const std::string id = r.value("id", std::string());
    const std::string marker = "/resourceGroups/";
    auto at = id.find(marker);
    if (at == std::string::npos) return std::string("-");
    auto start = at + marker.size();
    return id.substr(start, id.find('/', start) - start);
  };
  char line[512];
  std::snprintf(line, sizeof line, "%-32s %-24s %-16s %s\n", "NAME", "RESOURCE GROUP", "LOCATION", "CONNECTIVITY");
  std::string out = line;
  for (const auto& r : clusters) {
    std::snprintf(line, sizeof line, "%-32s %-24s %-16s %s\n", cell(r, "name").c_str(), group(r).c_str(),
                  cell(r, "location").c_str(), cell(r, "properties", "connectivityStatus").c_str());
    out += line;
  }
  return out;
}

const char* verb_name(ClusterCommand::Verb v) {
  switch (v) {
    case ClusterCommand::Verb::show:
      return "show";
    case ClusterCommand::Verb::list:
      return "list";
    case ClusterCommand::Verb::remove:
      return "delete";
  }
  return "";
}

}  // namespace

CLI::App* ClusterCommand::add_to(CLI::App& root) noexcept {
  try {
    const char* help = verb_ == Verb::show ? "Show a connected cluster (ARM's resource)"
                       : verb_ == Verb::list
                           ? "List the connected clusters you may read"
                           : "Delete a connected cluster: its agent in the cluster, then the resource";
    auto* sub = root.add_subcommand(verb_name(verb_), help);
    if (verb_ != Verb::list) sub->add_option("-n,--name", name_, "Name of the connected cluster")->required();
    auto* group = sub->add_option("-g,--resource-group", resource_group_, "Resource group");
    if (verb_ != Verb::list) group->required();
    sub->add_option("--subscription", subscription_, "Subscription ID")->envname("AZURE_SUBSCRIPTION_ID");
    add_sign_in_options(*sub, sign_in_);
    if (verb_ == Verb::remove) {
      sub->add_option("--kubeconfig", kubeconfig_,
                      "Kubeconfig file (default: $KUBECONFIG's first path, else ~/.kube/config)");
      sub->add_option("--kube-context", kube_context_, "Kubeconfig context of the cluster (default: the current one)");
      sub->add_flag("--relay-only", relay_only_, "Delete the resource only; leave the agent in the cluster");
      sub->add_flag("-y,--yes", yes_, "Do not ask for confirmation");
    } else {
      sub->add_option("-o,--output", output_, "json or table")
          ->check(CLI::IsMember({"json", "table"}))
          ->capture_default_str();
    }
    return sub;
  } catch (...) {
    return nullptr;
  }
}

int ClusterCommand::run() noexcept {
  const char* verb = verb_name(verb_);
  try {
    if (subscription_.empty()) return failed(verb, "no subscription: pass --subscription or set AZURE_SUBSCRIPTION_ID");
    auto m = sign_in(host_, sign_in_);
    if (!m) return failed(verb, m.error());
    if (verb_ == Verb::remove) return run_delete(m.value());
    nlohmann::json out;
    if (verb_ == Verb::show) {
      auto got = get_cluster(m.value(), ClusterId{subscription_, resource_group_, name_});
      if (!got) return failed(verb, got.error());
      if (!got->has_value())
        return failed(verb, "no connected cluster " + name_ + " in resource group " + resource_group_);
      out = **got;
    } else {
      auto got = list_clusters(m.value(), subscription_, resource_group_);
      if (!got) return failed(verb, got.error());
      out = got.value();
    }
    const std::string text =
        output_ == "table" ? table(verb_ == Verb::show ? nlohmann::json::array({out}) : out) : out.dump(2) + "\n";
    std::fwrite(text.data(), 1, text.size(), stdout);
    return 0;
  } catch (const std::exception& e) {
    return failed(verb, e.what());
  }
}

int ClusterCommand::run_delete(const ManagementTarget& m) {
  const ClusterId id{subscription_, resource_group_, name_};
  if (!yes_) {
    std::fprintf(stderr, "delete: this removes %s%s. Re-run with --yes to proceed.\n", id.resource_id().c_str(),
                 relay_only_ ? "" : " and its agent from the cluster");
    return 2;
  }
  if (!relay_only_) {
    // The agent first: once the resource is gone its listen key is refused anyway.
    std::filesystem::path file = kubeconfig_;
    if (file.empty()) {
      const char* k = std::getenv("KUBECONFIG");
      const char* home = std::getenv("HOME");
      file = k && *k ? std::filesystem::path(std::string(k).substr(0, std::string(k).find(':')))
                     : std::filesystem::path(home ? home : ".") / ".kube" / "config";
    }
    auto kube = load_kube_target(file, kube_context_);
    if (!kube) return failed("delete", kube.error() + " (or pass --relay-only)");
    AgentInstall none;
    auto objects = agent_objects(none, true);
    // Reverse order: the Deployment before what it mounts, the Namespace last.
    for (auto it = objects.rbegin(); it != objects.rend(); ++it) {
      auto path = object_path(object_json(*it));
      if (!path) return failed("delete", path.error());
      auto gone = delete_object(kube.value(), path.value());
      if (!gone) return failed("delete", gone.error());
    }
    std::fprintf(stderr, "Removed the agent from context %s\n", kube->context.c_str());
  }
  auto deleted = delete_cluster(m, id);
  if (!deleted) return failed("delete", deleted.error());
  std::fprintf(stderr, "%s %s\n", deleted.value() ? "Deleted" : "There was no", id.resource_id().c_str());
  return 0;
}

}  // namespace clusterconnect::onboarding
