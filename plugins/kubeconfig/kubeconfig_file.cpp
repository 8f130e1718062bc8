#include "kubeconfig_file.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <system_error>
#include <thread>
#include <vector>

namespace clusterconnect::kubeconfig {
namespace {

namespace fs = std::filesystem;

std::string describe(int error) { return std::error_code(error, std::generic_category()).message(); }

std::string seconds(std::chrono::milliseconds d) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f s", static_cast<double>(d.count()) / 1000.0);
  return buf;
}

// Closes a descriptor and removes a temp file unless the write committed.
class TempFile {
 public:
  TempFile(int fd, std::string path) : fd_(fd), path_(std::move(path)) {}
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;
  ~TempFile() {
    if (fd_ >= 0) ::close(fd_);
    if (!committed_) ::unlink(path_.c_str());
  }
  int fd() const { return fd_; }
  const std::string& path() const { return path_; }
  int close() {
    const int rc = ::close(fd_);
    fd_ = -1;
    return rc;
  }
  void commit() { committed_ = true; }

 private:
  int fd_;
  std::string path_;
  bool committed_ = false;
};

bool write_all(int fd, const std::string& text) {
  std::size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    done += static_cast<std::size_t>(n);
  }
  return true;
}

}  // namespace

fs::path KubeconfigLock::lock_path(const fs::path& file) { return fs::path(file.string() + ".lock"); }

Result<KubeconfigLock> KubeconfigLock::acquire(const fs::path& file, std::chrono::milliseconds timeout,
                                               std::chrono::milliseconds retry_interval) {
  const fs::path lock = lock_path(file);
  const auto start = std::chrono::steady_clock::now();
  const auto deadline = start + timeout;
  for (;;) {
    // Same call as client-go's lockFile: the file's existence is the lock.
    const int fd = ::open(lock.c_str(), O_RDONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0);
    if (fd >= 0) {
      ::close(fd);
      return KubeconfigLock(lock);
    }
    const int error = errno;
    if (error == EINTR) continue;
    if (error != EEXIST)
      return fail("its lock file " + lock.string() + " cannot be created (" + describe(error) +
                  "); check that you may write to " + lock.parent_path().string() + ", nothing was written");
    const auto now = std::chrono::steady_clock::now();
    if (now >= deadline)
      return fail("another program has held its lock for " + seconds(timeout) + " (" + lock.string() +
                  " exists); if no kubectl or connectedk8s is writing it, delete " + lock.string() +
                  " and retry, nothing was written");
    std::this_thread::sleep_for(std::min<std::chrono::steady_clock::duration>(retry_interval, deadline - now));
  }
}

KubeconfigLock::KubeconfigLock(KubeconfigLock&& other) noexcept : lock_(std::move(other.lock_)) { other.lock_.clear(); }

KubeconfigLock::~KubeconfigLock() {
  if (!lock_.empty()) ::unlink(lock_.c_str());
}

Result<KubeconfigFile> read_kubeconfig_file(const fs::path& file, std::uintmax_t max_size) {
  KubeconfigFile result;
  const int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int error = errno;
    if (error == ENOENT) return result;
    return fail("it cannot be read (" + describe(error) + "); check its permissions, nothing was written");
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return fail("it is not a regular file; pass another file, nothing was written");
  }
  const std::string too_large = "it is larger than " + std::to_string(max_size >> 20) +
                                " MiB, too large for a kubeconfig; move it aside, nothing was written";
  if (static_cast<std::uintmax_t>(st.st_size) > max_size) {
    ::close(fd);
    return fail(too_large);
  }
  std::vector<char> buf(64 * 1024);
  for (;;) {
    const ssize_t n = ::read(fd, buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int error = errno;
      ::close(fd);
      return fail("it cannot be read (" + describe(error) + "), nothing was written");
    }
    if (n == 0) break;
    result.text.append(buf.data(), static_cast<std::size_t>(n));
    if (result.text.size() > max_size) {  // it grew after fstat
      ::close(fd);
      return fail(too_large);
    }
  }
  ::close(fd);
  result.exists = true;
  result.mode = st.st_mode & 07777;
  result.owner = st.st_uid;
  result.group = st.st_gid;
  return result;
}

Result<void> make_private_directories(const fs::path& dir) {
  if (dir.empty()) return {};
  std::error_code ec;
  if (fs::is_directory(dir, ec)) return {};
  const fs::path parent = dir.parent_path();
  if (!parent.empty() && parent != dir)
    if (auto r = make_private_directories(parent); !r) return r;
  if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST)
    return fail("its directory " + dir.string() + " cannot be created (" + describe(errno) +
                "); create it or pass another file");
  if (!fs::is_directory(dir, ec))
    return fail(dir.string() + " is not a directory; pass another file");
  return {};
}

fs::path write_target(const fs::path& file) {
  fs::path target = file;
  std::error_code ec;
  // Bounded like the kernel's own symlink resolution.
  for (int hops = 0; hops < 40 && fs::is_symlink(fs::symlink_status(target, ec)); ++hops) {
    const fs::path next = fs::read_symlink(target, ec);
    if (ec) break;
    target = next.is_absolute() ? next : target.parent_path() / next;
  }
  return target;
}

Result<void> replace_file(const fs::path& file, const std::string& text, mode_t mode, bool keep_owner, uid_t owner,
                          gid_t group) {
  const fs::path dir = file.has_parent_path() ? file.parent_path() : fs::path(".");
  std::string name = (dir / ("." + file.filename().string() + ".tmp-XXXXXX")).string();
  const int fd = ::mkostemp(name.data(), O_CLOEXEC);
  if (fd < 0)
    return fail("a temp file cannot be created in " + dir.string() + " (" + describe(errno) +
                "); check that you may write there, nothing was written");
  TempFile temp(fd, name);
  // Only root can give a file away; for anyone else the new file is already theirs.
  if (keep_owner && (owner != ::geteuid() || group != ::getegid())) (void)::fchown(temp.fd(), owner, group);
  if (!write_all(temp.fd(), text) || ::fchmod(temp.fd(), mode) != 0 || ::fsync(temp.fd()) != 0 || temp.close() != 0)
    return fail("writing " + temp.path() + " failed (" + describe(errno) + "); check free space, nothing was written");
  if (::rename(temp.path().c_str(), file.c_str()) != 0)
    return fail("it cannot be replaced (" + describe(errno) + "); check that you may write to " + dir.string() +
                ", nothing was written");
  temp.commit();
  // The rename is durable only once the directory is on disk; some
  // filesystems refuse fsync on directories, which costs durability, not
  // correctness.
  const int dir_fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd >= 0) {
    (void)::fsync(dir_fd);
    ::close(dir_fd);
  }
  return {};
}

}  // namespace clusterconnect::kubeconfig
