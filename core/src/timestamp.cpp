#include "clusterconnect/timestamp.hpp"

#include <cstdio>
#include <ctime>

namespace clusterconnect {

void append_utc_timestamp(std::string& out, std::chrono::system_clock::time_point t) {
  using namespace std::chrono;
  const auto second = floor<seconds>(t);
  const auto ms = static_cast<int>(duration_cast<milliseconds>(t - second).count());
  thread_local std::time_t cached_second = -1;
  thread_local char cached[80];  // room for any int the format can print (-Wformat-truncation)
  if (const std::time_t s = system_clock::to_time_t(second); s != cached_second) {
    std::tm tm{};
    gmtime_r(&s, &tm);
    std::snprintf(cached, sizeof cached, "%04d-%02d-%02dT%02d:%02d:%02d", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                  tm.tm_hour, tm.tm_min, tm.tm_sec);
    cached_second = s;
  }
  out += cached;
  const char millis[] = {'.', static_cast<char>('0' + ms / 100), static_cast<char>('0' + ms / 10 % 10),
                         static_cast<char>('0' + ms % 10), 'Z'};
  out.append(millis, sizeof millis);
}

}  // namespace clusterconnect
