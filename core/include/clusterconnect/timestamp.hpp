#pragma once
// The time written into log and audit lines: UTC to the millisecond.

#include <chrono>
#include <string>

namespace clusterconnect {

// Appends "2026-12-04T10:11:12.345Z". The date and time up to the second are
// formatted once per second and thread; a call within the same second
// formats only the milliseconds.
void append_utc_timestamp(std::string& out, std::chrono::system_clock::time_point t);

}  // namespace clusterconnect
