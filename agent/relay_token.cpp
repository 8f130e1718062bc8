#include "relay_token.hpp"

#include <fstream>
#include <iterator>

#include "clusterconnect/sas_token.hpp"
#include "clusterconnect/url.hpp"

namespace clusterconnect::agent {
namespace {

constexpr auto token_lifetime = std::chrono::hours(1);
constexpr auto renew_before = std::chrono::minutes(10);

Result<std::string> read_small_file(const std::string& path, const char* what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return fail(std::string("cannot read the ") + what + " " + path);
  std::string text;
  text.resize(64 * 1024);
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  text.resize(static_cast<std::size_t>(in.gcount()));
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r' || text.back() == ' ')) text.pop_back();
  if (text.empty()) return fail(std::string("the ") + what + " " + path + " is empty");
  return text;
}

}  // namespace

Result<std::shared_ptr<RelayToken>> RelayToken::create(const std::string& relay_url, const std::string& key_name,
                                                       const std::string& key_file, const std::string& token_file) {
  auto url = parse_url(relay_url);
  if (!url) return fail("--relay-url: " + url.error());
  if (url->scheme != "wss") return fail("--relay-url must be wss://HOST/$hc/PATH: the relay is only reached over TLS");
  const std::string hc = "/$hc/";
  if (url->path.rfind(hc, 0) != 0 || url->path.size() <= hc.size())
    return fail("--relay-url must have the form wss://HOST/$hc/HYBRID_CONNECTION");
  auto t = std::make_shared<RelayToken>();
  // The token's resource is the hybrid connection's URI, as Azure Relay signs it.
  t->resource_ = "https://" + url->authority() + "/" + url->path.substr(hc.size());
  t->key_name_ = key_name;
  t->token_file_ = token_file;
  if (!key_file.empty()) {
    auto key = read_small_file(key_file, "listen key file");
    if (!key) return fail(key.error());
    t->key_ = key.value();
  } else {
    auto tok = read_small_file(token_file, "relay token file");
    if (!tok) return fail(tok.error());
  }
  return t;
}

std::string RelayToken::current() {
  std::lock_guard lock(mutex_);
  auto now = std::chrono::system_clock::now();
  if (!token_file_.empty()) {
    if (auto tok = read_small_file(token_file_, "relay token file")) token_ = tok.value();
    return token_;
  }
  if (token_.empty() || expires_ - now < renew_before) {
    expires_ = now + token_lifetime;
    token_ = make_sas_token(resource_, key_name_, key_, expires_);
  }
  return token_;
}

}  // namespace clusterconnect::agent
