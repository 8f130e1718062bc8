// Carries the right ABI string and a constructor, but exports no entry point.
// The constructor leaves a marker file where CLUSTERCONNECT_TEST_ENTRYLESS_MARKER
// says, so a test can tell whether the host ever mapped this code.
#include <cstdio>
#include <cstdlib>

#include "clusterconnect/plugin.hpp"

__attribute__((constructor)) static void leave_marker() {
  if (const char* path = std::getenv("CLUSTERCONNECT_TEST_ENTRYLESS_MARKER"))
    if (FILE* f = std::fopen(path, "w")) std::fclose(f);
}

extern "C" BOOST_SYMBOL_EXPORT __attribute__((used, section(".clusterconnect_abi")))
const char clusterconnect_abi_v1[] = CLUSTERCONNECT_ABI_STRING;
extern "C" BOOST_SYMBOL_EXPORT int not_the_entry_point() { return 1; }
