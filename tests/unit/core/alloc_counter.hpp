#pragma once
// Heap allocations made through this test program's operator new (all
// threads); alloc_counter.cpp replaces the global operators.
namespace clusterconnect::test {
long allocations() noexcept;
}
using clusterconnect::test::allocations;
