#include "running_proxies.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

#include "clusterconnect/ascii.hpp"
#include "cluster_selection.hpp"

namespace fs = std::filesystem;

namespace clusterconnect::proxy {
namespace {

// A state file is a few hundred bytes per cluster; anything much larger is
// not one of ours.
constexpr std::uintmax_t max_record_size = 4u << 20;
constexpr std::size_t max_records = 4096;

std::string trimmed_endpoint(std::string e) {
  while (!e.empty() && e.back() == '/') e.pop_back();
  return ascii_lowered(std::move(e));
}

// The directory exists (made 0700 if not), is a directory and no symbolic
// link, belongs to this user and is closed to others.
Result<void> private_directory(const fs::path& p) {
  if (::mkdir(p.c_str(), 0700) != 0 && errno != EEXIST)
    return fail("cannot create " + p.string() + ": " + std::strerror(errno));
  struct stat st {};
  if (::lstat(p.c_str(), &st) != 0) return fail("cannot inspect " + p.string() + ": " + std::strerror(errno));
  if (!S_ISDIR(st.st_mode)) return fail(p.string() + " is not a directory (a symbolic link or a file is refused)");
  if (st.st_uid != ::getuid()) return fail(p.string() + " belongs to another user; refusing to keep proxy state there");
  if ((st.st_mode & 077) != 0) {
    char mode[8];
    std::snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(st.st_mode & 0777));
    return fail(p.string() + " is open to other users (mode " + mode + "): make it 0700 (chmod 700)");
  }
  return {};
}

bool alive(const RunningProxy& p) {
  if (p.pid <= 0) return false;
  // EPERM: a process of another user now has this PID, so ours is gone.
  if (::kill(p.pid, 0) != 0) return false;
  return p.process_start.empty() || process_start_time(p.pid) == p.process_start;
}

}  // namespace

nlohmann::json to_json(const RunningProxy& p) {
  nlohmann::json clusters = nlohmann::json::array();
  for (const auto& c : p.clusters)
    clusters.push_back({{"subscription", c.ref.subscription},
                        {"resourceGroup", c.ref.resource_group},
                        {"name", c.ref.name},
                        {"context", c.context},
                        {"server", c.server}});
  return {{"pid", p.pid},
          {"processStart", p.process_start},
          {"started", p.started},
          {"state", p.state},
          {"endpoint", p.endpoint},
          {"kubeconfig", p.kubeconfig},
          {"privateKubeconfig", p.private_kubeconfig},
          {"port", p.port},
          {"clusters", clusters}};
}

Result<RunningProxy> running_proxy_from_json(const nlohmann::json& j) try {
  RunningProxy p;
  p.pid = j.at("pid").get<pid_t>();
  p.process_start = j.value("processStart", std::string());
  p.started = j.value("started", std::int64_t{0});
  p.state = j.value("state", std::string("starting"));
  p.endpoint = j.value("endpoint", std::string());
  p.kubeconfig = j.value("kubeconfig", std::string());
  p.private_kubeconfig = j.value("privateKubeconfig", false);
  p.port = j.value("port", 0u);
  for (const auto& c : j.at("clusters"))
    p.clusters.push_back({{c.value("subscription", std::string()), c.at("resourceGroup").get<std::string>(),
                           c.at("name").get<std::string>()},
                          c.value("context", std::string()),
                          c.value("server", std::string())});
  return p;
} catch (const std::exception& e) {
  return fail(std::string("not a proxy state file: ") + e.what());
}

std::string process_start_time(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!in || !std::getline(in, line)) return {};
  // The command name, in parentheses, may hold spaces: count fields after it.
  auto close = line.rfind(')');
  if (close == std::string::npos) return {};
  std::istringstream rest(line.substr(close + 1));
  std::string field;
  for (int i = 3; i <= 22; ++i)
    if (!(rest >> field)) return {};
  return field;
}

std::optional<std::string> collision(const std::vector<RunningProxy>& running, const std::string& endpoint,
                                     const std::vector<ClusterRef>& clusters, const std::string& kubeconfig,
                                     unsigned port) {
  for (const auto& other : running) {
    if (trimmed_endpoint(other.endpoint) != trimmed_endpoint(endpoint)) continue;
    for (const auto& served : other.clusters) {
      for (const auto& wanted : clusters) {
        if (!same_cluster(served.ref, wanted)) continue;
        const bool same_file = !kubeconfig.empty() && !other.private_kubeconfig && other.kubeconfig == kubeconfig;
        const bool same_port =
            port != 0 && (other.port == port ||
                          (!served.server.empty() && served.server.substr(served.server.rfind(':') + 1) == std::to_string(port)));
        if (!same_file && !same_port) continue;
        std::string where = other.kubeconfig.empty() ? std::string("printed on its standard output")
                                                      : other.private_kubeconfig ? "its command's own kubeconfig"
                                                                                 : other.kubeconfig;
        std::string text = "cluster " + display_name(served.ref) + " is already served by connectedk8s proxy (pid " +
                           std::to_string(other.pid) + ")";
        if (served.server.empty()) {
          text += ", which is starting (port " + std::to_string(other.port) + ", kubeconfig " + where + ")";
        } else {
          text += " at " + served.server + ", context " + served.context + " in " + where;
        }
        text += same_file ? ": use that context, or stop that proxy first (kill " + std::to_string(other.pid) + ")"
                          : ": use that proxy, stop it first (kill " + std::to_string(other.pid) +
                                "), or pick another port with --port";
        return text;
      }
    }
  }
  return std::nullopt;
}

Result<RuntimeDirectory> RuntimeDirectory::open(const fs::path& base_in) {
  fs::path base = base_in;
  if (base.empty()) {
    if (const char* x = std::getenv("XDG_RUNTIME_DIR"); x && *x == '/') {
      base = x;
    } else {
      const char* tmp = std::getenv("TMPDIR");
      base = fs::path(tmp && *tmp == '/' ? tmp : "/tmp") / ("connectedk8s-" + std::to_string(::getuid()));
      if (auto r = private_directory(base); !r) return fail(r.error());
    }
  }
  fs::path dir = base / "connectedk8s";
  if (auto r = private_directory(dir); !r) return fail(r.error());
  dir /= "proxies";
  if (auto r = private_directory(dir); !r) return fail(r.error());
  return RuntimeDirectory(dir);
}

std::vector<RunningProxy> RuntimeDirectory::running() const {
  std::vector<RunningProxy> out;
  std::error_code ec;
  std::size_t seen = 0;
  for (fs::directory_iterator it(dir_, ec), end; !ec && it != end && seen < max_records; it.increment(ec), ++seen) {
    const auto& path = it->path();
    if (path.extension() != ".json") continue;
    std::error_code size_ec;
    if (!it->is_regular_file(size_ec) || fs::file_size(path, size_ec) > max_record_size) continue;
    std::ifstream in(path);
    std::stringstream text;
    text << in.rdbuf();
    auto parsed = nlohmann::json::parse(text.str(), nullptr, false);
    if (parsed.is_discarded()) continue;  // being written, or not ours: left alone
    auto record = running_proxy_from_json(parsed);
    if (!record || path.stem() != std::to_string(record->pid)) continue;
    if (!alive(record.value())) {
      fs::remove(path, size_ec);
      continue;
    }
    out.push_back(std::move(record.value()));
  }
  std::sort(out.begin(), out.end(), [](const RunningProxy& a, const RunningProxy& b) {
    return a.started != b.started ? a.started < b.started : a.pid < b.pid;
  });
  return out;
}

Result<void> RuntimeDirectory::write(const RunningProxy& p) const {
  const fs::path target = dir_ / (std::to_string(p.pid) + ".json");
  const fs::path tmp = dir_ / (std::to_string(p.pid) + ".json.tmp");
  const std::string text = to_json(p).dump() + "\n";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) return fail("cannot write " + tmp.string() + ": " + std::strerror(errno));
  ::fchmod(fd, 0600);
  std::size_t done = 0;
  while (done < text.size()) {
    ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int err = errno;
      ::close(fd);
      ::unlink(tmp.c_str());
      return fail("cannot write " + tmp.string() + ": " + std::strerror(err));
    }
    done += static_cast<std::size_t>(n);
  }
  ::close(fd);
  if (::rename(tmp.c_str(), target.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    return fail("cannot write " + target.string() + ": " + std::strerror(err));
  }
  return {};
}

void RuntimeDirectory::remove(pid_t pid) const noexcept {
  std::error_code ec;
  fs::remove(dir_ / (std::to_string(pid) + ".json"), ec);
}

RuntimeDirectory::Lock::~Lock() {
  if (fd_ >= 0) ::close(fd_);  // releases the flock
}

Result<RuntimeDirectory::Lock> RuntimeDirectory::lock() const {
  const fs::path path = dir_ / "lock";
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) return fail("cannot open " + path.string() + ": " + std::strerror(errno));
  // Held only while records are read and one is written: a bounded wait.
  for (int attempt = 0; ::flock(fd, LOCK_EX | LOCK_NB) != 0; ++attempt) {
    if ((errno != EWOULDBLOCK && errno != EINTR) || attempt >= 500) {
      ::close(fd);
      return fail("cannot lock " + path.string() + ": another connectedk8s proxy holds it");
    }
    ::usleep(10'000);
  }
  return Lock(fd);
}

}  // namespace clusterconnect::proxy
