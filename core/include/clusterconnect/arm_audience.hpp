#pragma once
// Azure Resource Manager's token audiences, in every cloud. A token for one of
// them is good for every subscription its holder can manage: the relay's
// management API has an audience of its own, and neither the relay nor the
// proxy ever accepts or requests one of these.

#include <string>
#include <string_view>

#include "clusterconnect/ascii.hpp"

namespace clusterconnect {

inline bool is_arm_audience(std::string_view audience) {
  std::string a = ascii_lowered(std::string(audience));
  while (!a.empty() && a.back() == '/') a.pop_back();
  for (std::string_view arm : {"https://management.azure.com", "https://management.core.windows.net",
                               "https://management.usgovcloudapi.net", "https://management.core.usgovcloudapi.net",
                               "https://management.chinacloudapi.net", "https://management.core.chinacloudapi.net",
                               "797f4846-ba00-4fd7-ba43-dac1f8f63013"})  // Windows Azure Service Management API's app ID
    if (a == arm) return true;
  return false;
}

}  // namespace clusterconnect
