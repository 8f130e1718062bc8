// Carries the right ABI string but exports no entry point.
#include "clusterconnect/plugin.hpp"

extern "C" BOOST_SYMBOL_EXPORT __attribute__((used, section(".clusterconnect_abi")))
const char clusterconnect_abi_v1[] = CLUSTERCONNECT_ABI_STRING;
extern "C" BOOST_SYMBOL_EXPORT int something_else() { return 1; }
