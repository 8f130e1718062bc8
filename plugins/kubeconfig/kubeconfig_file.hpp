#pragma once
// The file side of a kubeconfig update: client-go's lock file, a bounded read
// and an atomic replace. Failure messages are reasons to append to
// "cannot update FILE: ".

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <string>

#include "clusterconnect/result.hpp"

namespace clusterconnect::kubeconfig {

// client-go's lock: FILE.lock created with O_CREAT|O_EXCL, removed when the
// write is done. client-go gives up at once when the lock exists; this waits
// up to a deadline, and never breaks a lock it did not create.
class KubeconfigLock {
 public:
  static Result<KubeconfigLock> acquire(const std::filesystem::path& file, std::chrono::milliseconds timeout,
                                        std::chrono::milliseconds retry_interval);
  KubeconfigLock(KubeconfigLock&& other) noexcept;
  KubeconfigLock& operator=(KubeconfigLock&&) = delete;
  KubeconfigLock(const KubeconfigLock&) = delete;
  ~KubeconfigLock();

  static std::filesystem::path lock_path(const std::filesystem::path& file);

 private:
  explicit KubeconfigLock(std::filesystem::path lock) : lock_(std::move(lock)) {}
  std::filesystem::path lock_;  // empty once moved from
};

struct KubeconfigFile {
  bool exists = false;
  std::string text;
  mode_t mode = 0600;
  uid_t owner = 0;
  gid_t group = 0;
};

// Reads `file` (following symlinks); a missing file is not an error.
Result<KubeconfigFile> read_kubeconfig_file(const std::filesystem::path& file, std::uintmax_t max_size);

// Creates `dir` and any missing parents with mode 0700.
Result<void> make_private_directories(const std::filesystem::path& dir);

// Replaces `file` by `text`: a temp file in the same directory, written,
// given `mode` (and `owner`/`group` when `keep_owner`), fsynced and renamed
// over `file`; then the directory is fsynced. On failure `file` is untouched
// and the temp file is gone.
Result<void> replace_file(const std::filesystem::path& file, const std::string& text, mode_t mode, bool keep_owner,
                          uid_t owner, gid_t group);

// Where writes to `file` land: the final target when `file` is a symlink, so
// the link survives.
std::filesystem::path write_target(const std::filesystem::path& file);

}  // namespace clusterconnect::kubeconfig
