#include "entra_authenticator.hpp"

#include <boost/asio/post.hpp>
#include <spdlog/spdlog.h>

#include <cctype>
#include <cstdlib>
#include <unordered_map>

#include <openssl/sha.h>

#include "claim_clock.hpp"
#include "fetch_worker.hpp"
#include "pop.hpp"

namespace clusterconnect::entra {
namespace {

std::string trim_authority(std::string a) {
  while (!a.empty() && a.back() == '/') a.pop_back();
  return a;
}

Result<std::vector<std::string>> string_list(const nlohmann::json& options, const char* name) {
  std::vector<std::string> out;
  if (!options.contains(name)) return out;
  const auto& v = options[name];
  if (v.is_string()) {
    out.push_back(v.get<std::string>());
    return out;
  }
  if (!v.is_array()) return fail(std::string("option '") + name + "' must be a list of strings");
  for (const auto& s : v) {
    if (!s.is_string() || s.get<std::string>().empty()) return fail(std::string("option '") + name + "' must be a list of non-empty strings");
    out.push_back(s.get<std::string>());
  }
  return out;
}

bool is_guid(const std::string& s) {
  if (s.size() != 36) return false;
  for (std::size_t i = 0; i < s.size(); ++i) {
    const bool dash = i == 8 || i == 13 || i == 18 || i == 23;
    if (dash ? s[i] != '-' : !std::isxdigit(static_cast<unsigned char>(s[i]))) return false;
  }
  return true;
}

}  // namespace

bool valid_tenant(const std::string& tenant) {
  if (tenant.empty() || tenant.size() > 253) return false;
  for (unsigned char c : tenant)
    if (!std::isalnum(c) && c != '-' && c != '.') return false;
  return true;
}

Result<AuthenticatorConfig> parse_authenticator_options(const nlohmann::json& options) {
  if (!options.is_null() && !options.is_object()) return fail("authenticator:entra options must be a JSON object");
  const nlohmann::json o = options.is_null() ? nlohmann::json::object() : options;
  AuthenticatorConfig c;
  try {
    auto tenants = string_list(o, "tenants");
    if (!tenants) return fail(tenants.error());
    if (tenants->empty()) return fail("authenticator:entra needs 'tenants': the Entra ID tenant IDs whose users may sign in");
    for (auto& t : *tenants) {
      // Issuers name a tenant by its ID, never by a domain, so only IDs can match.
      if (!is_guid(t)) return fail("tenant '" + printable(t) + "' is not a tenant ID (a GUID such as 72f988bf-86f1-41af-91ab-2d7cd011db47)");
      // Issuers carry tenant IDs in lower case.
      for (auto& ch : t) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    }
    c.rules.tenants = std::move(*tenants);

    auto audiences = string_list(o, "audiences");
    if (!audiences) return fail(audiences.error());
    c.rules.audiences = audiences->empty() ? std::vector<std::string>{arc_server_app_id} : std::move(*audiences);

    std::string authority = o.value("authority", std::string());
    if (authority.empty()) {
      const char* env = std::getenv("AZURE_AUTHORITY_HOST");
      authority = env && *env ? env : default_authority;
    }
    c.rules.authority = trim_authority(authority);
    c.http.allow_http_loopback = o.value("allow_http_loopback", false);
    c.http.ca_file = o.value("ca_file", std::string());
    if (auto ok = check_url_allowed(c.rules.authority + "/", c.http); !ok) return fail("authority: " + ok.error());

    const int skew = o.value("clock_skew_seconds", 300);
    if (skew < 0 || skew > max_clock_skew_seconds) {
      return fail("clock_skew_seconds must be between 0 and " + std::to_string(max_clock_skew_seconds));
    }
    c.rules.clock_skew = std::chrono::seconds(skew);

    c.rules.username_claim = o.value("username_claim", std::string("upn"));
    if (c.rules.username_claim.empty() || c.rules.username_claim.size() > 64) {
      return fail("username_claim must name a token claim (default \"upn\": upn, else oid)");
    }
    for (unsigned char ch : c.rules.username_claim)
      if (!std::isalnum(ch) && ch != '_' && ch != '-' && ch != '.' && ch != ':')
        return fail("username_claim '" + printable(c.rules.username_claim) + "' is not a claim name");
    for (const char* name : {"username_prefix", "groups_prefix"}) {
      const std::string prefix = o.value(name, std::string());
      if (!prefix.empty()) {
        if (auto why = reserved_name_reason(prefix); !why.empty())
          return fail(std::string(name) + " '" + printable(prefix) + "' is not accepted: " + why);
      }
      (std::string(name) == "username_prefix" ? c.rules.username_prefix : c.rules.groups_prefix) = prefix;
    }

    if (auto refresh = read_key_refresh_options(o, c.key_refresh_min_interval, c.key_refresh_interval); !refresh)
      return fail(refresh.error());

    c.pop = o.value("pop", false);
    const std::string resource_id = o.value("cluster_resource_id", std::string());
    if (!resource_id.empty()) {
      auto id = normalize_cluster_resource_id(resource_id);
      if (!id) return fail("cluster_resource_id: " + id.error());
      c.cluster_resource_id = *id;
    }
    if (c.pop && c.cluster_resource_id.empty())
      return fail(
          "proof-of-possession mode (pop) needs cluster_resource_id: the cluster's ARM resource ID, which requests "
          "must be signed for");
    const long long replay = o.value("pop_replay_cache_size", 200000LL);
    if (replay < 1000 || replay > 10000000) return fail("pop_replay_cache_size must be between 1000 and 10000000");
    c.pop_replay_cache_size = static_cast<std::size_t>(replay);

    if (o.contains("group_source")) {
      return fail("group_source is not supported yet: tokens with a group overage are rejected");
    }
  } catch (const nlohmann::json::exception& e) {
    return fail(std::string("authenticator:entra options: ") + e.what());
  }
  return c;
}

struct EntraAuthenticator::Shared {
  Shared(asio::io_context& io_context, AuthenticatorConfig c, JwksCache::Fetch fetch,
         std::shared_ptr<spdlog::logger> log)
      : io(io_context),
        logger(std::move(log)),
        config(std::move(c)),
        keys(JwksCache::Settings{config.rules.authority, config.key_refresh_min_interval, config.key_refresh_interval,
                                 config.key_clock},
             fetch ? std::move(fetch) : http_fetcher(config.http)),
        nonces(config.pop_replay_cache_size) {}

  asio::io_context& io;
  std::shared_ptr<spdlog::logger> logger;
  AuthenticatorConfig config;
  JwksCache keys;
  NonceCache nonces;  // of accepted proof-of-possession requests
  ClaimClock clock;


  AuthOutcome finish(const Jws& jws, const PublicKey& key, const std::string& kid, const std::string& digest) {
    if (!verify_rs256(key.get(), jws.signing_input, jws.signature)) {
      return reject(AuthFailure::bad_signature, "signature does not verify with the tenant's key '" + printable(kid) + "'");
    }
    auto outcome = check_claims(jws, config.rules, clock.now());
    if (outcome.ok() && jws.payload.contains("exp") && jws.payload["exp"].is_number()) {
      auto exp = std::chrono::system_clock::time_point(std::chrono::seconds(jws.payload["exp"].get<std::int64_t>()));
      remember(digest, outcome, exp + config.rules.clock_skew, jws, kid);
    }
    return outcome;
  }

  // Verified tokens, by SHA-256 of the token, until they expire: kubectl sends
  // the same token on every request, and an RS256 verification per request
  // dominates the agent's CPU. Only successes are kept; the map is bounded.
  // A remembered token stays valid only while its signing key is still in the
  // tenant's key set, so a key rotated out stops its tokens at once.
  struct Verified {
    AuthOutcome outcome;
    std::chrono::system_clock::time_point valid_until;
    std::string tenant;
    std::string kid;
  };
  static constexpr std::size_t max_verified = 4096;
  std::mutex verified_mutex;
  std::unordered_map<std::string, Verified> verified;

  static std::string digest_of(const std::string& token) {
    unsigned char md[SHA256_DIGEST_LENGTH];
    SHA256(reinterpret_cast<const unsigned char*>(token.data()), token.size(), md);
    return std::string(reinterpret_cast<const char*>(md), sizeof md);
  }

  std::optional<AuthOutcome> recall(const std::string& digest) {
    auto now = clock.now();
    std::lock_guard lock(verified_mutex);
    auto it = verified.find(digest);
    if (it == verified.end()) return std::nullopt;
    // The same freshness as for keys: past the refresh interval, a remembered
    // token goes through the full path again (which refreshes the keys).
    if (now >= it->second.valid_until || !keys.find(it->second.tenant, it->second.kid) || keys.stale(it->second.tenant)) {
      verified.erase(it);
      return std::nullopt;
    }
    return it->second.outcome;
  }

  void remember(const std::string& digest, const AuthOutcome& outcome, std::chrono::system_clock::time_point until,
                const Jws& jws, const std::string& kid) {
    auto tid = jws.payload.contains("tid") && jws.payload["tid"].is_string() ? jws.payload["tid"].get<std::string>() : "";
    for (auto& ch : tid) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    auto now = clock.now();
    std::lock_guard lock(verified_mutex);
    if (verified.size() >= max_verified) {
      for (auto it = verified.begin(); it != verified.end();) it = it->second.valid_until <= now ? verified.erase(it) : std::next(it);
      if (verified.size() >= max_verified) verified.clear();
    }
    verified[digest] = Verified{outcome, until, tid, kid};
  }

  // Issuer (from the tenant's discovery documents), then key, signature and
  // claims. `fetch_error` says why the documents could not be read, if so.
  AuthOutcome complete(const Jws& jws, const std::string& tenant, const std::string& kid, const std::string& digest,
                       const std::string& fetch_error) {
    if (!keys.loaded(tenant)) return key_missing(tenant, kid, fetch_error);
    if (auto issuer = check_issuer(jws, tenant, keys.issuers(tenant)); !issuer.ok()) return issuer;
    auto key = keys.find(tenant, kid);
    return key ? finish(jws, key, kid, digest) : key_missing(tenant, kid, fetch_error);
  }

  // Background: keys past the refresh interval are fetched again, so a key
  // removed from the published set stops its tokens (also remembered ones)
  // without waiting for an unknown kid.
  void refresh_stale_keys() {
    for (const auto& tenant : keys.stale_tenants()) {
      auto r = keys.refresh(tenant);
      if (!logger) continue;
      if (!r) logger->warn("entra: background key refresh: {}", r.error());
      else if (r.value()) logger->debug("entra: refreshed the signing keys of tenant {}", tenant);
    }
  }

  AuthOutcome key_missing(const std::string& tenant, const std::string& kid, const std::string& fetch_error) {
    if (keys.loaded(tenant)) {
      return reject(AuthFailure::unknown_key, "signing key '" + printable(kid) + "' is not in tenant " + tenant +
                                                  "'s current key set (rotated out, or not issued by Entra ID)");
    }
    return reject(AuthFailure::keys_unavailable, "signing keys of tenant " + tenant + " are unavailable: " +
                                                     (fetch_error.empty() ? std::string("not fetched yet") : fetch_error));
  }
};

EntraAuthenticator::EntraAuthenticator(asio::io_context& io, AuthenticatorConfig config, JwksCache::Fetch fetch,
                                       std::shared_ptr<spdlog::logger> logger)
    : shared_(std::make_shared<Shared>(io, std::move(config), std::move(fetch), std::move(logger))), worker_(std::make_unique<FetchWorker>()) {
  worker_->set_idle_task(shared_->config.key_check_period, [shared = shared_] { shared->refresh_stale_keys(); });
}

EntraAuthenticator::~EntraAuthenticator() = default;

void EntraAuthenticator::set_clock(std::function<std::chrono::system_clock::time_point()> now) { shared_->clock.set(std::move(now)); }

void EntraAuthenticator::async_authenticate(std::string bearer_token, UniqueFunction<void(AuthOutcome)> handler) noexcept {
  if (shared_->config.pop) return authenticate_pop(std::move(bearer_token), std::move(handler));
  authenticate_bearer(std::move(bearer_token), std::move(handler));
}

void EntraAuthenticator::authenticate_pop(std::string token, UniqueFunction<void(AuthOutcome)> handler) noexcept {
  AuthOutcome outcome;
  try {
    auto parsed = parse_jws(token);
    if (!parsed.ok()) return handler(reject(parsed.failure, std::move(parsed.message)));
    if (!is_signed_request(parsed.jws)) {
      // Another issuer's token (a service account's, in the agent's `both`
      // mode) is not this authenticator's to refuse; an Entra bearer token is.
      std::string tenant;
      if (auto other = select_tenant(parsed.jws, shared_->config.rules, tenant);
          other.failure == AuthFailure::wrong_issuer)
        return handler(std::move(other));
      return handler(reject(AuthFailure::pop_required,
                            "a bearer token was presented, but this cluster accepts only proof-of-possession tokens; "
                            "connect with 'connectedk8s proxy --pop'"));
    }
    auto shr = check_signed_request(parsed.jws, shared_->config.cluster_resource_id, shared_->clock.now());
    if (!shr.ok()) return handler(std::move(shr.outcome));
    auto inner = parse_jws(shr.request.access_token);
    if (!inner.ok())
      return handler(reject(inner.failure == AuthFailure::not_applicable ? AuthFailure::malformed : inner.failure,
                            "the access token in the proof-of-possession token: " + inner.message));
    // The binding is read from the very token that is validated next, so
    // once that validation passes, so has the `cnf` checked here.
    if (auto bound = check_pop_binding(inner.jws, shr.request.thumbprint); !bound.ok())
      return handler(std::move(bound));
    authenticate_bearer(std::move(shr.request.access_token),
                        [shared = shared_, nonce = std::move(shr.request.nonce), ts = shr.request.ts,
                         handler = std::move(handler)](AuthOutcome result) mutable {
                          if (!result.ok()) {
                            result.message = "the access token in the proof-of-possession token: " + result.message;
                            return handler(std::move(result));
                          }
                          // Last, so only a request that passed every check uses up its nonce.
                          if (auto fresh = shared->nonces.use(nonce, ts, shared->clock.now()); !fresh.ok())
                            return handler(std::move(fresh));
                          handler(std::move(result));
                        });
    return;
  } catch (const std::exception& e) {
    outcome = reject(AuthFailure::malformed, std::string("token could not be processed: ") + e.what());
  }
  if (handler) handler(std::move(outcome));
}

void EntraAuthenticator::authenticate_bearer(std::string bearer_token,
                                             UniqueFunction<void(AuthOutcome)> handler) noexcept {
  AuthOutcome outcome;
  try {
    const std::string digest = Shared::digest_of(bearer_token);
    if (auto known = shared_->recall(digest)) return handler(std::move(*known));
    auto parsed = parse_jws(bearer_token);
    if (!parsed.ok()) {
      outcome = reject(parsed.failure, std::move(parsed.message));
    } else if (outcome = check_algorithm(parsed.jws); outcome.ok()) {
      std::string tenant;
      outcome = select_tenant(parsed.jws, shared_->config.rules, tenant);
      if (outcome.ok()) {
        const auto& header = parsed.jws.header;
        const std::string kid = header.contains("kid") && header["kid"].is_string() ? header["kid"].get<std::string>() : "";
        auto& keys = shared_->keys;
        if (kid.empty()) {
          outcome = reject(AuthFailure::unknown_key, "token header names no signing key ('kid')");
        } else if (keys.loaded(tenant) && !keys.stale(tenant) && (keys.find(tenant, kid) || !keys.refresh_due(tenant))) {
          // Everything needed is cached, or an unknown kid arrived moments
          // after a refresh and is not worth a fetch.
          outcome = shared_->complete(parsed.jws, tenant, kid, digest, "");
        } else {
          FetchWorker::Job job = [shared = shared_, jws = std::move(parsed.jws), tenant, kid, digest,
                                  handler = std::move(handler)](bool cancelled) mutable {
            AuthOutcome result;
            if (cancelled) {
              result = reject(AuthFailure::keys_unavailable, "signing keys could not be fetched now (shutting down, or too many fetches pending)");
            } else {
              std::string fetch_error;
              if (!shared->keys.find(tenant, kid) || shared->keys.stale(tenant)) {
                auto r = shared->keys.refresh(tenant);
                if (!r) {
                  fetch_error = r.error();
                  if (shared->logger) shared->logger->warn("entra: {}", fetch_error);
                } else if (r.value() && shared->logger) {
                  shared->logger->info("entra: fetched the signing keys of tenant {}", tenant);
                }
              }
              result = shared->complete(jws, tenant, kid, digest, fetch_error);
            }
            asio::post(shared->io, [handler = std::move(handler), result = std::move(result)]() mutable { handler(std::move(result)); });
          };
          if (worker_->post(job)) return;
          // The job was not taken; its handler is still inside it.
          job(true);
          return;
        }
      }
    }
  } catch (const std::exception& e) {
    outcome = reject(AuthFailure::malformed, std::string("token could not be processed: ") + e.what());
  }
  // Empty only if an allocation failed after the handler moved into a job.
  if (handler) handler(std::move(outcome));
}

}  // namespace clusterconnect::entra
