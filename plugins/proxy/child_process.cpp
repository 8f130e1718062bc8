#include "child_process.hpp"

#include <spawn.h>
#include <sys/wait.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <string_view>

extern char** environ;

namespace clusterconnect::proxy {

std::vector<std::string> child_environment(const char* const* env, const std::string& kubeconfig,
                                           const std::vector<std::string>& secrets) {
  std::vector<std::string> out;
  for (const char* const* e = env; e && *e; ++e) {
    std::string_view entry(*e);
    auto eq = entry.find('=');
    std::string_view name = entry.substr(0, eq);
    std::string_view value = eq == std::string_view::npos ? std::string_view{} : entry.substr(eq + 1);
    if (name == "KUBECONFIG") continue;
    if (std::find(std::begin(credential_variables), std::end(credential_variables), name) != std::end(credential_variables))
      continue;
    auto held = [&](const std::string& s) {
      if (s.empty() || value.empty()) return false;
      // The value itself, or with the whitespace a file's last line carries.
      std::string_view v = value;
      while (!v.empty() && std::isspace(static_cast<unsigned char>(v.back()))) v.remove_suffix(1);
      while (!v.empty() && std::isspace(static_cast<unsigned char>(v.front()))) v.remove_prefix(1);
      return v == s || v == "Bearer " + s;
    };
    if (std::any_of(secrets.begin(), secrets.end(), held)) continue;
    out.emplace_back(entry);
  }
  out.push_back("KUBECONFIG=" + kubeconfig);
  return out;
}

Result<pid_t> spawn_with_kubeconfig(const std::vector<std::string>& argv, const std::string& kubeconfig,
                                    const std::vector<std::string>& secrets) {
  if (argv.empty()) return fail("no command given after '--'");
  std::vector<std::string> env_strings = child_environment(environ, kubeconfig, secrets);
  std::vector<char*> envp, args;
  for (auto& s : env_strings) envp.push_back(s.data());
  envp.push_back(nullptr);
  std::vector<std::string> argv_copy = argv;
  for (auto& s : argv_copy) args.push_back(s.data());
  args.push_back(nullptr);
  pid_t pid = 0;
  int rc = ::posix_spawnp(&pid, args[0], nullptr, nullptr, args.data(), envp.data());
  if (rc != 0) return fail("cannot run '" + argv[0] + "': " + std::strerror(rc));
  return pid;
}

int wait_for_exit(pid_t pid) {
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) return 127;
  }
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return 1;
}

}  // namespace clusterconnect::proxy
