#include "yaml_kubeconfig.hpp"

#include <exception>
#include <system_error>

#include "kubeconfig_document.hpp"
#include "kubeconfig_file.hpp"
#include "kubeconfig_layout.hpp"

namespace clusterconnect::kubeconfig {

Result<void> YamlKubeconfig::update(const std::filesystem::path& file, bool create,
                                    const std::function<Result<void>(YAML::Node&)>& change) noexcept {
  std::string prefix = "cannot update the kubeconfig: ";
  try {
    prefix = "cannot update " + file.string() + ": ";
    if (file.empty() || !file.has_filename()) return fail("cannot update the kubeconfig: no file name was given");
    if (create)
      if (auto made = make_private_directories(file.parent_path()); !made) return fail(prefix + made.error());
    std::error_code ec;
    if (!create && !std::filesystem::exists(file, ec)) return {};  // nothing to remove from

    auto lock = KubeconfigLock::acquire(file, options_.lock_timeout, options_.lock_retry_interval);
    if (!lock) return fail(prefix + lock.error());

    const std::filesystem::path target = write_target(file);
    auto current = read_kubeconfig_file(target, options_.max_file_size);
    if (!current) return fail(prefix + current.error());
    if (!current->exists && !create) return {};

    auto parsed = parse_kubeconfig(current->text);
    if (!parsed) return fail(prefix + parsed.error() + "; fix or move it, nothing was written");
    // The parsed tree stays as read: the layout needs its source positions,
    // which yaml-cpp's Clone does not carry.
    const YAML::Node original = *parsed;
    YAML::Node root = parsed->IsNull() ? new_kubeconfig() : YAML::Clone(*parsed);
    if (parsed->IsNull() && !create) return {};

    if (auto changed = change(root); !changed)
      return fail(prefix + changed.error() + "; fix or move it, nothing was written");
    if (current->exists && same_node(original, root)) return {};

    auto text = lay_out_kubeconfig(current->text, original, root);
    if (!text) return fail(prefix + text.error() + "; nothing was written");

    // A kubeconfig written here holds a bearer token: like client-go, a new
    // file is 0600; an existing file keeps its owner bits and loses any group
    // or other access, so a token is never readable by other users.
    const mode_t mode = current->exists ? ((current->mode & 0700) | 0600) : 0600;
    auto written = replace_file(target, *text, mode, current->exists, current->owner, current->group);
    if (!written) return fail(prefix + written.error());
    return {};
  } catch (const std::exception& e) {
    return fail(prefix + e.what() + "; nothing was written");
  } catch (...) {
    return fail(prefix + "an unexpected error occurred; nothing was written");
  }
}

Result<void> YamlKubeconfig::merge(const std::filesystem::path& file, const KubeconfigEntry& entry) noexcept {
  try {
    if (auto valid = validate_entry(entry); !valid) return fail("cannot update " + file.string() + ": " + valid.error());
    return update(file, true, [&](YAML::Node& root) { return merge_entry(root, entry); });
  } catch (...) {
    return fail("cannot update " + file.string() + ": out of memory; nothing was written");
  }
}

Result<void> YamlKubeconfig::remove(const std::filesystem::path& file, const std::string& cluster,
                                    const std::string& user, const std::string& context) noexcept {
  try {
    return update(file, false,
                  [&](YAML::Node& root) { return remove_entries(root, cluster, user, context); });
  } catch (...) {
    return fail("cannot update " + file.string() + ": out of memory; nothing was written");
  }
}

Result<std::string> YamlKubeconfig::render(const KubeconfigEntry& entry) noexcept {
  try {
    if (auto valid = validate_entry(entry); !valid) return fail("cannot write the kubeconfig: " + valid.error());
    auto text = lay_out_kubeconfig("", YAML::Node(), standalone_kubeconfig(entry));
    if (!text) return fail("cannot write the kubeconfig: " + text.error());
    return text;
  } catch (const std::exception& e) {
    return fail(std::string("cannot write the kubeconfig: ") + e.what());
  }
}

}  // namespace clusterconnect::kubeconfig
