#include "azure_cli.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <ctime>
#include <vector>

#include <nlohmann/json.hpp>

extern char** environ;

namespace clusterconnect::entra {
namespace {

constexpr std::size_t max_output = 256 * 1024;

bool executable(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode) && ::access(path.c_str(), X_OK) == 0;
}

std::string last_line(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.pop_back();
  auto nl = s.rfind('\n');
  if (nl != std::string::npos) s = s.substr(nl + 1);
  return s.size() > 300 ? s.substr(0, 300) + "..." : s;
}

}  // namespace

std::string find_on_path(const std::string& command) {
  if (command.find('/') != std::string::npos) return executable(command) ? command : std::string();
  const char* path = std::getenv("PATH");
  if (!path) return {};
  std::string p = path;
  std::size_t start = 0;
  while (start <= p.size()) {
    auto end = p.find(':', start);
    if (end == std::string::npos) end = p.size();
    std::string dir = p.substr(start, end - start);
    if (dir.empty()) dir = ".";
    const std::string candidate = dir + "/" + command;
    if (executable(candidate)) return candidate;
    start = end + 1;
  }
  return {};
}

Result<CliToken> parse_azure_cli_output(const std::string& json_text) {
  auto j = nlohmann::json::parse(json_text, nullptr, false);
  if (j.is_discarded() || !j.is_object() || !j.contains("accessToken") || !j["accessToken"].is_string()) {
    return fail("az account get-access-token printed no accessToken");
  }
  CliToken t;
  t.access_token = j["accessToken"].get<std::string>();
  if (j.contains("expires_on") && j["expires_on"].is_number_integer()) {
    t.expires_on = j["expires_on"].get<long long>();
  } else if (j.contains("expires_on") && j["expires_on"].is_string()) {
    t.expires_on = std::atoll(j["expires_on"].get<std::string>().c_str());
  } else if (j.contains("expiresOn") && j["expiresOn"].is_string()) {
    std::tm tm{};
    const std::string s = j["expiresOn"].get<std::string>();
    if (!::strptime(s.c_str(), "%Y-%m-%d %H:%M:%S", &tm)) return fail("az printed an expiresOn it is not possible to read: " + s);
    tm.tm_isdst = -1;  // the CLI prints local time
    t.expires_on = static_cast<long long>(std::mktime(&tm));
  }
  if (t.expires_on <= 0) return fail("az account get-access-token printed no expiry");
  return t;
}

Result<CliToken> azure_cli_token(const std::string& az_command, const std::string& resource, const std::string& tenant,
                                 std::chrono::seconds timeout) {
  const std::string az = find_on_path(az_command);
  if (az.empty()) return fail("the Azure CLI ('" + az_command + "') is not on PATH; install it and run 'az login', or pick another method");
  std::vector<std::string> args = {az, "account", "get-access-token", "--resource", resource, "--output", "json"};
  if (!tenant.empty()) {
    args.push_back("--tenant");
    args.push_back(tenant);
  }
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);

  int out_pipe[2], err_pipe[2];
  if (::pipe2(out_pipe, O_CLOEXEC) != 0) return fail("cannot run az: pipe failed");
  if (::pipe2(err_pipe, O_CLOEXEC) != 0) {
    ::close(out_pipe[0]);
    ::close(out_pipe[1]);
    return fail("cannot run az: pipe failed");
  }
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, out_pipe[1], 1);
  posix_spawn_file_actions_adddup2(&actions, err_pipe[1], 2);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  pid_t pid = -1;
  int rc = ::posix_spawn(&pid, az.c_str(), &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  ::close(out_pipe[1]);
  ::close(err_pipe[1]);
  if (rc != 0) {
    ::close(out_pipe[0]);
    ::close(err_pipe[0]);
    return fail("cannot run " + az);
  }

  std::string out, err;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  bool timed_out = false;
  pollfd fds[2] = {{out_pipe[0], POLLIN, 0}, {err_pipe[0], POLLIN, 0}};
  int open_fds = 2;
  while (open_fds > 0) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()).count();
    if (left <= 0) {
      timed_out = true;
      break;
    }
    if (::poll(fds, 2, static_cast<int>(left)) < 0) {
      if (errno == EINTR) continue;
      break;
    }
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      char buf[4096];
      ssize_t n = ::read(fds[i].fd, buf, sizeof buf);
      std::string& target = i == 0 ? out : err;
      if (n > 0 && target.size() < max_output) {
        target.append(buf, static_cast<std::size_t>(n));
      } else if (n <= 0) {
        ::close(fds[i].fd);
        fds[i].fd = -1;
        --open_fds;
      }
    }
  }
  for (auto& f : fds)
    if (f.fd >= 0) ::close(f.fd);
  if (timed_out) ::kill(pid, SIGKILL);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (timed_out) return fail("az account get-access-token did not finish within " + std::to_string(timeout.count()) + " s");
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return fail("az account get-access-token failed (run 'az login' first?): " + last_line(err));
  }
  return parse_azure_cli_output(out);
}

}  // namespace clusterconnect::entra
