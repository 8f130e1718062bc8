#pragma once
// Boost 1.74 Asio under -std=c++20 uses std::exchange without including
// <utility>; every Asio include in this project goes through this header.
#include <utility>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/buffer.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/system/error_code.hpp>

namespace clusterconnect {
namespace asio = boost::asio;
using error_code = boost::system::error_code;
}  // namespace clusterconnect
