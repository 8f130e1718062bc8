// The token cache on disk: it is used only in a private directory of this
// user, and never writes through a symbolic link another user planted.

#include <catch2/catch.hpp>

#include <sys/stat.h>
#include <unistd.h>

#include <fstream>

#include "../../support/test_env.hpp"
#include "token_cache.hpp"

using namespace clusterconnect::entra;
namespace fs = std::filesystem;

namespace {

const CachedToken sample{"access-token", "refresh-token", 2000000000, 1999996400};

mode_t mode_of(const fs::path& p) {
  struct stat st {};
  REQUIRE(::lstat(p.c_str(), &st) == 0);
  return st.st_mode & 07777;
}

std::string slurp(const fs::path& p) {
  std::ifstream in(p);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

}  // namespace

TEST_CASE("token cache: a new directory is created 0700 and the file 0600", "[auth-entra][cache]") {
  clusterconnect::test::TempDir dir;
  TokenCache cache(dir.path() / "new" / "entra-token-cache.json");
  REQUIRE(cache.usable());
  cache.store("k", sample);
  CHECK(mode_of(dir.path() / "new") == 0700);
  CHECK(mode_of(cache.file()) == 0600);
  auto t = cache.load("k");
  REQUIRE(t);
  CHECK(t->access_token == "access-token");
  // No temporary file is left behind.
  int files = 0;
  for (auto& e : fs::directory_iterator(dir.path() / "new")) files += e.path().filename().string().find(".tmp") != std::string::npos;
  CHECK(files == 0);
}

TEST_CASE("token cache: a directory others may write is refused", "[auth-entra][cache]") {
  clusterconnect::test::TempDir dir;
  const auto d = dir.path() / "shared";
  fs::create_directory(d);
  for (mode_t m : {0777, 0770, 0722, 0702}) {
    ::chmod(d.c_str(), m);
    TokenCache cache(d / "entra-token-cache.json");
    auto ok = cache.usable();
    REQUIRE_FALSE(ok);
    CHECK(ok.error().find("writable by other users") != std::string::npos);
    CHECK(ok.error().find("chmod 700") != std::string::npos);
    cache.store("k", sample);
    CHECK_FALSE(fs::exists(d / "entra-token-cache.json"));
    CHECK_FALSE(cache.load("k"));
  }
  ::chmod(d.c_str(), 0700);
  TokenCache cache(d / "entra-token-cache.json");
  CHECK(cache.usable());
}

TEST_CASE("token cache: a directory of another user is refused", "[auth-entra][cache]") {
  if (::geteuid() != 0) {
    // Only root can make a directory of another user: check the message
    // through a directory that belongs to root instead.
    struct stat st {};
    REQUIRE(::stat("/", &st) == 0);
    auto ok = check_private_directory("/");
    REQUIRE_FALSE(ok);
    CHECK(ok.error().find("belongs to another user") != std::string::npos);
    return;
  }
  clusterconnect::test::TempDir dir;
  const auto d = dir.path() / "theirs";
  fs::create_directory(d);
  ::chmod(d.c_str(), 0700);
  REQUIRE(::chown(d.c_str(), 65534, 65534) == 0);
  TokenCache cache(d / "entra-token-cache.json");
  auto ok = cache.usable();
  REQUIRE_FALSE(ok);
  CHECK(ok.error().find("belongs to another user") != std::string::npos);
  cache.store("k", sample);
  CHECK_FALSE(fs::exists(d / "entra-token-cache.json"));
}

TEST_CASE("token cache: symbolic links at the lock and cache file are not followed", "[auth-entra][cache]") {
  clusterconnect::test::TempDir dir;
  const auto d = dir.path() / "cache";
  fs::create_directory(d);
  ::chmod(d.c_str(), 0700);
  const auto victim = dir.path() / "victim";
  std::ofstream(victim) << "precious\n";
  ::chmod(victim.c_str(), 0644);
  const auto file = d / "entra-token-cache.json";

  SECTION("lock file") {
    fs::create_symlink(victim, file.string() + ".lock");
    TokenCache(file).store("k", sample);
    CHECK_FALSE(fs::exists(file));  // no lock, no write
    CHECK(slurp(victim) == "precious\n");
    CHECK(mode_of(victim) == 0644);
  }
  SECTION("temporary file") {
    // A link planted where a predictable temporary name would be.
    fs::create_symlink(victim, file.string() + ".tmp." + std::to_string(::getpid()));
    TokenCache cache(file);
    cache.store("k", sample);
    CHECK(slurp(victim) == "precious\n");
    CHECK(mode_of(victim) == 0644);
    CHECK(cache.load("k"));
  }
  SECTION("cache file") {
    fs::create_symlink(victim, file);
    TokenCache cache(file);
    CHECK_FALSE(cache.load("k"));
    cache.store("k", sample);
    // The link is replaced by a private file; its target is untouched.
    CHECK(slurp(victim) == "precious\n");
    CHECK_FALSE(fs::is_symlink(file));
    CHECK(mode_of(file) == 0600);
    CHECK(cache.load("k"));
  }
  SECTION("a cache file others may write is ignored") {
    TokenCache cache(file);
    cache.store("k", sample);
    REQUIRE(cache.load("k"));
    ::chmod(file.c_str(), 0666);
    CHECK_FALSE(cache.load("k"));
  }
}
