#include "child_process.hpp"

#include <spawn.h>
#include <sys/wait.h>

#include <cerrno>
#include <cstring>

extern char** environ;

namespace clusterconnect::proxy {

Result<pid_t> spawn_with_kubeconfig(const std::vector<std::string>& argv, const std::string& kubeconfig) {
  if (argv.empty()) return fail("no command given after '--'");
  std::vector<std::string> env_strings;
  for (char** e = environ; *e; ++e)
    if (std::strncmp(*e, "KUBECONFIG=", 11) != 0) env_strings.emplace_back(*e);
  env_strings.push_back("KUBECONFIG=" + kubeconfig);
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
