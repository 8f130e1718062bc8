#pragma once
// Helpers for hermetic tests: temp directories, paths into the build's stage
// tree, and running a command to capture its output and exit status.

#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <string>

namespace clusterconnect::test {

inline std::filesystem::path stage_dir() {
  const char* s = std::getenv("CLUSTERCONNECT_STAGE");
#ifdef CLUSTERCONNECT_TEST_STAGE
  if (!s) s = CLUSTERCONNECT_TEST_STAGE;
#endif
  return s ? std::filesystem::path(s) : std::filesystem::current_path() / "stage";
}
inline std::filesystem::path source_dir() {
  const char* s = std::getenv("CLUSTERCONNECT_SOURCE");
#ifdef CLUSTERCONNECT_TEST_SOURCE
  if (!s) s = CLUSTERCONNECT_TEST_SOURCE;
#endif
  return s ? std::filesystem::path(s) : std::filesystem::current_path();
}

class TempDir {
 public:
  TempDir() {
    std::random_device rd;
    path_ = std::filesystem::temp_directory_path() / ("cc-test-" + std::to_string(::getpid()) + "-" + std::to_string(rd()));
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

struct CommandResult {
  int status = -1;
  std::string output;  // stdout and stderr together
};

// Runs `command` through /bin/sh with stderr folded into stdout.
inline CommandResult run(const std::string& command) {
  CommandResult r;
  FILE* p = ::popen((command + " 2>&1").c_str(), "r");
  if (!p) return r;
  char buf[4096];
  while (auto n = std::fread(buf, 1, sizeof buf, p)) r.output.append(buf, n);
  int st = ::pclose(p);
  r.status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return r;
}

// True when the CI environment variable is set (to anything but "" or "0"):
// then a missing prerequisite is a failure, not a skip.
inline bool in_ci() {
  const char* ci = std::getenv("CI");
  return ci && *ci && std::string(ci) != "0";
}

inline std::string quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'') out += "'\\''";
    else out += c;
  }
  return out + "'";
}

}  // namespace clusterconnect::test

// A test that cannot run here: a warning for a developer, a failure naming
// what to install when CI is set. Returns from the test case.
#define CLUSTERCONNECT_SKIP(why)                                              \
  do {                                                                        \
    if (::clusterconnect::test::in_ci()) FAIL("prerequisite missing: " << why); \
    WARN("skipped: " << why);                                                 \
    return;                                                                   \
  } while (false)
