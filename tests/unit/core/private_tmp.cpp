// Modules load only from directories nobody else can write, and /tmp is one
// anybody can write: these tests keep their temporary directories (and those
// of the connectedk8s processes they start) under the build tree instead.
#include <stdlib.h>

#include <filesystem>

namespace {
const bool private_tmp = [] {
  const std::filesystem::path dir = CORE_TESTS_TMPDIR;
  std::filesystem::create_directories(dir);
  std::filesystem::permissions(dir, std::filesystem::perms::owner_all, std::filesystem::perm_options::replace);
  ::setenv("TMPDIR", dir.c_str(), 1);
  return true;
}();
}  // namespace
