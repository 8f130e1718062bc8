#pragma once
// The proxies this user runs, as `connectedk8s proxy status` lists them and as
// a starting proxy checks before it takes a cluster another one serves: one
// state file per process (PID.json, 0600) in a private runtime directory,
// $XDG_RUNTIME_DIR/connectedk8s/proxies (else ${TMPDIR:-/tmp}/connectedk8s-UID/proxies).
// A process removes its file when it exits; a file whose process is gone
// (killed, crashed, or its PID reused by another program) is ignored and
// removed by whoever reads it next.

#include <sys/types.h>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "clusterconnect/result.hpp"
#include "management_client.hpp"

namespace clusterconnect::proxy {

struct RunningCluster {
  ClusterRef ref;
  std::string context;
  std::string server;  // https://127.0.0.1:PORT; empty while the proxy starts
};

struct RunningProxy {
  pid_t pid = 0;
  std::string process_start;  // /proc/PID/stat start time: tells a reused PID apart
  std::int64_t started = 0;   // unix seconds
  std::string state = "starting";  // starting, then ready
  std::string endpoint;            // the relay's management endpoint
  std::string kubeconfig;          // absolute path; empty for -f - ; a private file for -- COMMAND
  bool private_kubeconfig = false;  // -- COMMAND: the kubeconfig is the command's own
  unsigned port = 0;               // the requested --port
  std::vector<RunningCluster> clusters;
};

nlohmann::json to_json(const RunningProxy& p);
Result<RunningProxy> running_proxy_from_json(const nlohmann::json& j);

// The start time of process `pid` as /proc/PID/stat gives it (field 22, clock
// ticks since boot), or empty when there is no such process.
std::string process_start_time(pid_t pid);

// Why a proxy for `clusters` at `endpoint` (kubeconfig `kubeconfig`, empty
// for none of the user's; --port `port`, 0 for any) would collide with one
// that runs: the same cluster, written into the same kubeconfig (its context
// would be replaced) or asked on the same port. Names the running proxy's
// PID, address and context. Proxies with their own kubeconfig and port run
// side by side.
std::optional<std::string> collision(const std::vector<RunningProxy>& running, const std::string& endpoint,
                                     const std::vector<ClusterRef>& clusters, const std::string& kubeconfig,
                                     unsigned port);

class RuntimeDirectory {
 public:
  // `base` empty: $XDG_RUNTIME_DIR, else ${TMPDIR:-/tmp}/connectedk8s-UID.
  // Creates BASE/connectedk8s/proxies 0700; refuses one that another user
  // owns, that others may read, or that is a symbolic link.
  static Result<RuntimeDirectory> open(const std::filesystem::path& base = {});

  const std::filesystem::path& path() const { return dir_; }

  // The proxies that run, oldest first; removes the files of those that do not.
  std::vector<RunningProxy> running() const;
  // Writes PID.json (0600) atomically.
  Result<void> write(const RunningProxy& p) const;
  void remove(pid_t pid) const noexcept;

  // Held while a starting proxy checks the others and writes its own file,
  // so two that start together cannot both take a cluster.
  class Lock {
   public:
    explicit Lock(int fd) : fd_(fd) {}
    Lock(Lock&& o) noexcept : fd_(o.fd_) { o.fd_ = -1; }
    Lock& operator=(Lock&&) = delete;
    ~Lock();

   private:
    int fd_;
  };
  Result<Lock> lock() const;

 private:
  explicit RuntimeDirectory(std::filesystem::path dir) : dir_(std::move(dir)) {}
  std::filesystem::path dir_;
};

// This process's state file: written by claim(), removed on destruction.
class OwnRecord {
 public:
  OwnRecord(RuntimeDirectory dir, RunningProxy record) : dir_(std::move(dir)), record_(std::move(record)) {}
  OwnRecord(const OwnRecord&) = delete;
  OwnRecord& operator=(const OwnRecord&) = delete;
  ~OwnRecord() { dir_.remove(record_.pid); }
  RunningProxy& record() { return record_; }
  Result<void> update() const { return dir_.write(record_); }

 private:
  RuntimeDirectory dir_;
  RunningProxy record_;
};

}  // namespace clusterconnect::proxy
