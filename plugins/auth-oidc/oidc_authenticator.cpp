#include "oidc_authenticator.hpp"

#include <spdlog/spdlog.h>
#include <boost/asio/post.hpp>

#include <algorithm>
#include <cctype>
#include <mutex>

#include "claim_clock.hpp"
#include "fetch_worker.hpp"

namespace clusterconnect::oidc {
namespace {

bool valid_claim_name(const std::string& name) {
  if (name.empty() || name.size() > 64) return false;
  return std::all_of(name.begin(), name.end(), [](unsigned char c) {
    return std::isalnum(c) || c == '_' || c == '-' || c == '.' || c == ':' || c == '/';
  });
}

std::string string_option(const nlohmann::json& o, const char* name, std::string fallback = {}) {
  if (!o.contains(name) || o[name].is_null()) return fallback;
  if (!o[name].is_string()) throw std::invalid_argument(std::string("option '") + name + "' must be a string");
  return o[name].get<std::string>();
}

// {"claim": "value"} or ["claim=value", ...] (as kube-apiserver's repeated --oidc-required-claim).
Result<std::map<std::string, std::string>> required_claims(const nlohmann::json& o) {
  std::map<std::string, std::string> out;
  if (!o.contains("required_claims") || o["required_claims"].is_null()) return out;
  const auto& v = o["required_claims"];
  auto add = [&](const std::string& name, const std::string& value) -> Result<void> {
    if (!valid_claim_name(name)) return fail("required claim '" + printable(name) + "' is not a claim name");
    out[name] = value;
    return {};
  };
  if (v.is_object()) {
    for (const auto& [name, value] : v.items()) {
      if (!value.is_string()) return fail("required claim '" + printable(name) + "' must have a string value");
      if (auto ok = add(name, value.get<std::string>()); !ok) return fail(ok.error());
    }
  } else if (v.is_array()) {
    for (const auto& item : v) {
      const std::string s = item.is_string() ? item.get<std::string>() : std::string();
      const auto eq = s.find('=');
      if (eq == std::string::npos || eq == 0)
        return fail("required claim '" + printable(s) + "' must be written claim=value");
      if (auto ok = add(s.substr(0, eq), s.substr(eq + 1)); !ok) return fail(ok.error());
    }
  } else {
    return fail("option 'required_claims' must be an object of claim: value, or a list of claim=value");
  }
  return out;
}

Result<std::vector<std::string>> signing_algs(const nlohmann::json& o) {
  if (!o.contains("signing_algs") || o["signing_algs"].is_null()) return supported_algorithms;
  std::vector<std::string> out;
  const auto& v = o["signing_algs"];
  auto add = [&](const std::string& alg) -> Result<void> {
    if (std::find(supported_algorithms.begin(), supported_algorithms.end(), alg) == supported_algorithms.end())
      return fail("signing algorithm '" + printable(alg, 16) + "' is not supported; choose among RS256 and ES256");
    if (std::find(out.begin(), out.end(), alg) == out.end()) out.push_back(alg);
    return {};
  };
  if (v.is_string()) {
    // "RS256,ES256", as kube-apiserver's --oidc-signing-algs.
    std::string list = v.get<std::string>();
    for (std::size_t start = 0; start <= list.size();) {
      const auto comma = std::min(list.find(',', start), list.size());
      if (auto ok = add(list.substr(start, comma - start)); !ok) return fail(ok.error());
      start = comma + 1;
    }
  } else if (v.is_array()) {
    for (const auto& a : v) {
      if (auto ok = add(a.is_string() ? a.get<std::string>() : std::string()); !ok) return fail(ok.error());
    }
  } else {
    return fail("option 'signing_algs' must be a list such as [\"RS256\", \"ES256\"]");
  }
  if (out.empty()) return fail("option 'signing_algs' names no algorithm");
  return out;
}

}  // namespace

Result<AuthenticatorConfig> parse_authenticator_options(const nlohmann::json& options) {
  if (!options.is_null() && !options.is_object()) return fail("authenticator:oidc options must be a JSON object");
  const nlohmann::json o = options.is_null() ? nlohmann::json::object() : options;
  AuthenticatorConfig c;
  try {
    auto& r = c.rules;
    r.issuer = string_option(o, "issuer");
    if (r.issuer.empty())
      return fail(
          "authenticator:oidc needs 'issuer': the OpenID provider's issuer URL, exactly as its tokens carry it");
    c.http.allow_http_loopback = o.value("allow_http_loopback", false);
    c.http.ca_file = string_option(o, "ca_file");
    if (auto ok = check_url_allowed(r.issuer, c.http); !ok) return fail("issuer: " + ok.error());
    if (r.issuer.find_first_of("?#") != std::string::npos)
      return fail("issuer '" + printable(r.issuer) + "' must not have a query or fragment");

    r.client_id = string_option(o, "client_id");
    if (r.client_id.empty())
      return fail("authenticator:oidc needs 'client_id': the audience every accepted token must carry");

    r.username_claim = string_option(o, "username_claim", "sub");
    if (!valid_claim_name(r.username_claim))
      return fail("username_claim '" + printable(r.username_claim) + "' is not a claim name");
    const std::string prefix = string_option(o, "username_prefix");
    if (!prefix.empty() && prefix != "-") {
      if (auto why = reserved_name_reason(prefix); !why.empty())
        return fail("username_prefix '" + printable(prefix) + "' is not accepted: " + why);
    }
    r.username_prefix = resolve_username_prefix(prefix, r.username_claim, r.issuer);

    r.groups_claim = string_option(o, "groups_claim");
    if (!r.groups_claim.empty() && !valid_claim_name(r.groups_claim))
      return fail("groups_claim '" + printable(r.groups_claim) + "' is not a claim name");
    r.groups_prefix = string_option(o, "groups_prefix");
    if (!r.groups_prefix.empty()) {
      if (auto why = reserved_name_reason(r.groups_prefix); !why.empty())
        return fail("groups_prefix '" + printable(r.groups_prefix) + "' is not accepted: " + why);
    }

    auto required = required_claims(o);
    if (!required) return fail(required.error());
    r.required_claims = std::move(*required);
    auto algs = signing_algs(o);
    if (!algs) return fail(algs.error());
    r.signing_algs = std::move(*algs);

    const int skew = o.value("clock_skew_seconds", 60);
    if (skew < 0 || skew > max_clock_skew_seconds)
      return fail("clock_skew_seconds must be between 0 and " + std::to_string(max_clock_skew_seconds));
    r.clock_skew = std::chrono::seconds(skew);

    if (auto refresh = read_key_refresh_options(o, c.key_refresh_min_interval, c.key_refresh_interval); !refresh)
      return fail(refresh.error());
  } catch (const std::exception& e) {
    return fail(std::string("authenticator:oidc options: ") + e.what());
  }
  return c;
}

namespace {

// One source, the issuer, found by OpenID Connect Discovery; only keys for
// the accepted algorithms are kept.
JwksCache::Settings key_settings(const AuthenticatorConfig& c) {
  JwksCache::Settings s;
  s.min_refresh_interval = c.key_refresh_min_interval;
  s.max_age = c.key_refresh_interval;
  s.now = c.key_clock;
  s.layout = JwksCache::Layout::issuer;
  s.algorithms = c.rules.signing_algs;
  return s;
}

}  // namespace

struct OidcAuthenticator::Shared {
  Shared(AuthenticatorConfig c, asio::io_context& context, JwksCache::Fetch fetch, std::shared_ptr<spdlog::logger> log)
      : config(std::move(c)),
        io(context),
        logger(std::move(log)),
        keys(key_settings(config), fetch ? std::move(fetch) : http_fetcher(config.http)) {}

  AuthenticatorConfig config;
  asio::io_context& io;
  std::shared_ptr<spdlog::logger> logger;
  JwksCache keys;  // one source: the issuer
  ClaimClock clock;

  const std::string& issuer() const { return config.rules.issuer; }

  // True when the cached keys decide this token without a fetch: they are
  // fresh, and either hold the key or were fetched too recently to ask again
  // (a stream of invented `kid`s must not become a stream of fetches).
  bool decidable(const std::string& kid) const {
    return keys.loaded(issuer()) && !keys.stale(issuer()) && (keys.find(issuer(), kid) || !keys.refresh_due(issuer()));
  }

  AuthOutcome verify(const Jws& jws, const std::string& alg, const std::string& kid, const std::string& fetch_error) {
    auto key = keys.find(issuer(), kid);
    if (!key && keys.loaded(issuer()))
      return reject(AuthFailure::unknown_key, "signing key '" + printable(kid) + "' is not in the current key set of " +
                                                  issuer() + " (rotated out, or not issued by it)");
    if (!key)
      return reject(AuthFailure::keys_unavailable,
                    "signing keys of " + issuer() +
                        " are unavailable: " + (fetch_error.empty() ? std::string("not fetched yet") : fetch_error));
    if (!verify_signature(alg, key.get(), jws.signing_input, jws.signature))
      return reject(AuthFailure::bad_signature,
                    "signature does not verify with the issuer's key '" + printable(kid) + "' (" + alg + ")");
    return check_claims(jws, config.rules, clock.now());
  }

  // On the fetch thread: refresh what is missing or stale, then decide.
  AuthOutcome refresh_and_verify(const Jws& jws, const std::string& alg, const std::string& kid) {
    std::string fetch_error;
    if (!keys.find(issuer(), kid) || keys.stale(issuer())) {
      auto r = keys.refresh(issuer());
      if (!r) fetch_error = r.error();
      if (logger && !r) logger->warn("oidc: {}", fetch_error);
      if (logger && r && r.value()) logger->info("oidc: fetched the signing keys of {}", issuer());
    }
    return verify(jws, alg, kid, fetch_error);
  }

  void refresh_stale_keys() {
    if (keys.stale_tenants().empty()) return;
    auto r = keys.refresh(issuer());
    if (logger && !r) logger->warn("oidc: background key refresh: {}", r.error());
  }
};

void OidcAuthenticator::set_clock(std::function<std::chrono::system_clock::time_point()> now) {
  shared_->clock.set(std::move(now));
}

OidcAuthenticator::OidcAuthenticator(asio::io_context& io, AuthenticatorConfig config, JwksCache::Fetch fetch,
                                     std::shared_ptr<spdlog::logger> logger)
    : shared_(std::make_shared<Shared>(std::move(config), io, std::move(fetch), std::move(logger))),
      worker_(std::make_unique<FetchWorker>()) {
  worker_->set_idle_task(shared_->config.key_check_period, [shared = shared_] { shared->refresh_stale_keys(); });
}

void OidcAuthenticator::async_authenticate(std::string bearer_token,
                                           UniqueFunction<void(AuthOutcome)> handler) noexcept {
  AuthOutcome outcome;
  try {
    auto parsed = parse_jws(bearer_token);
    if (!parsed.ok()) return handler(reject(parsed.failure, std::move(parsed.message)));
    // The issuer first: another issuer's token (a service account's, in the
    // agent's `both` mode) is refused as wrong_issuer whatever else it is.
    if (outcome = check_issuer(parsed.jws, shared_->config.rules); !outcome.ok()) return handler(std::move(outcome));
    if (outcome = check_algorithm(parsed.jws, shared_->config.rules); !outcome.ok()) return handler(std::move(outcome));
    const std::string alg = parsed.jws.header["alg"].get<std::string>();
    const std::string kid = string_claim(parsed.jws.header, "kid");
    if (kid.empty()) return handler(reject(AuthFailure::unknown_key, "token header names no signing key ('kid')"));
    if (shared_->decidable(kid)) return handler(shared_->verify(parsed.jws, alg, kid, ""));

    FetchWorker::Job job = [shared = shared_, jws = std::move(parsed.jws), alg, kid,
                            handler = std::move(handler)](bool cancelled) mutable {
      AuthOutcome result =
          cancelled ? reject(AuthFailure::keys_unavailable,
                             "signing keys could not be fetched now (shutting down, or too many fetches pending)")
                    : shared->refresh_and_verify(jws, alg, kid);
      asio::post(shared->io,
                 [handler = std::move(handler), result = std::move(result)]() mutable { handler(std::move(result)); });
    };
    if (!worker_->post(job)) job(true);  // not taken: its handler is still inside it
    return;
  } catch (const std::exception& e) {
    outcome = reject(AuthFailure::malformed, std::string("token could not be processed: ") + e.what());
  }
  // Empty only if an allocation failed after the handler moved into a job.
  if (handler) handler(std::move(outcome));
}

// Joins the fetch thread; jobs still queued complete their handlers as cancelled.
OidcAuthenticator::~OidcAuthenticator() = default;

}  // namespace clusterconnect::oidc
