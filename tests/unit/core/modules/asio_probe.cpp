// A module whose command starts a timer and a loopback socket exchange on the
// host's io_context and reports whether every completion ran on a host thread.
#include <future>

#include "clusterconnect/asio_fwd.hpp"
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>

#include "clusterconnect/command.hpp"
#include "clusterconnect/plugin.hpp"

namespace {
using namespace clusterconnect;
using boost::asio::ip::tcp;

class Probe final : public CommandCapability {
 public:
  explicit Probe(HostServices& h) : host_(h) {}
  CLI::App* add_to(CLI::App&) noexcept override { return nullptr; }
  int run() noexcept override {
    auto& io = host_.io_context();
    std::promise<int> done;
    int pending = 3, failures = 0;
    std::mutex m;
    auto finish = [&](bool ok) {
      std::lock_guard l(m);
      if (!ok || !io.get_executor().running_in_this_thread()) ++failures;
      if (--pending == 0) done.set_value(failures);
    };
    boost::asio::steady_timer timer(io, std::chrono::milliseconds(10));
    timer.async_wait([&](error_code ec) { finish(!ec); });
    tcp::acceptor acceptor(io, tcp::endpoint(boost::asio::ip::address_v4::loopback(), 0));
    tcp::socket server(io), client(io);
    char in[5] = {};
    acceptor.async_accept(server, [&](error_code ec) {
      if (ec) return finish(false), finish(false);
      boost::asio::async_read(server, boost::asio::buffer(in), [&](error_code ec2, std::size_t) {
        finish(!ec2 && std::string(in, 5) == "hello");
      });
    });
    client.async_connect(acceptor.local_endpoint(), [&](error_code ec) {
      if (ec) return finish(false);
      boost::asio::async_write(client, boost::asio::buffer("hello", 5), [&](error_code ec2, std::size_t) { finish(!ec2); });
    });
    auto f = done.get_future();
    if (f.wait_for(std::chrono::seconds(10)) != std::future_status::ready) return 2;
    return f.get() == 0 ? 0 : 1;
  }

 private:
  HostServices& host_;
};

class M final : public Module {
 public:
  explicit M(HostServices& h) : h_(h) {}
  std::shared_ptr<CommandCapability> command(std::string_view n) noexcept override {
    return n == "asio-probe" ? std::make_shared<Probe>(h_) : nullptr;
  }
  HostServices& h_;
};
const char* const caps[] = {"command:asio-probe"};
std::unique_ptr<Module> create(HostServices& h) noexcept { return std::make_unique<M>(h); }
const PluginDescriptor& descriptor() noexcept {
  static const PluginDescriptor d{CLUSTERCONNECT_ABI_STRING, "asio-probe", "0", "", caps, 1, &create};
  return d;
}
}  // namespace
CLUSTERCONNECT_PLUGIN(descriptor)
