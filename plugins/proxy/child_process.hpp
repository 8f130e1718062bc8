#pragma once
// CI mode: run a command with KUBECONFIG pointing at a private kubeconfig and
// pass on its exit status.

#include <string>
#include <sys/types.h>
#include <vector>

#include "clusterconnect/result.hpp"

namespace clusterconnect::proxy {

// Starts argv[0] (searched on PATH) with the current environment plus
// KUBECONFIG=kubeconfig.
Result<pid_t> spawn_with_kubeconfig(const std::vector<std::string>& argv, const std::string& kubeconfig);

// Waits for the child; returns its exit status, or 128 + signal number.
int wait_for_exit(pid_t pid);

}  // namespace clusterconnect::proxy
