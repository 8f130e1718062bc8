// Pending rendezvous: legs paired by ticket in either order, tickets spent
// once, expiry handing back the leg that waited, and the pending limits.

#include <catch2/catch.hpp>

#include <memory>

#include "rendezvous_book.hpp"

using namespace clusterconnect::relay;
using namespace std::chrono_literals;

namespace {

using Leg = std::unique_ptr<int>;  // move-only, as a socket is
using Book = RendezvousBook<Leg>;
const std::string cluster_a = "/subscriptions/s/resourceGroups/team-a/providers/Microsoft.Kubernetes/connectedClusters/prod";
const std::string cluster_b = "/subscriptions/s/resourceGroups/team-b/providers/Microsoft.Kubernetes/connectedClusters/prod";
const auto t0 = Book::Clock::time_point{} + 1h;

Leg leg(int id) { return std::make_unique<int>(id); }

}  // namespace

TEST_CASE("legs that name one ticket are paired, in either order", "[relay][rendezvous]") {
  Book book;
  std::string why;
  REQUIRE(book.open("t1", cluster_a, t0, why));
  REQUIRE(book.open("t2", cluster_a, t0, why));
  CHECK(book.pending() == 2);

  // The proxy's leg first.
  REQUIRE(std::holds_alternative<Book::Parked>(book.present("t1", LegSide::proxy, leg(1), t0 + 1s)));
  auto r = book.present("t1", LegSide::agent, leg(2), t0 + 2s);
  REQUIRE(std::holds_alternative<Book::Paired>(r));
  auto& p = std::get<Book::Paired>(r);
  CHECK(*p.proxy == 1);
  CHECK(*p.agent == 2);
  CHECK(p.cluster == cluster_a);

  // The agent's leg first.
  REQUIRE(std::holds_alternative<Book::Parked>(book.present("t2", LegSide::agent, leg(3), t0 + 1s)));
  auto r2 = book.present("t2", LegSide::proxy, leg(4), t0 + 1s);
  REQUIRE(std::holds_alternative<Book::Paired>(r2));
  CHECK(*std::get<Book::Paired>(r2).proxy == 4);
  CHECK(*std::get<Book::Paired>(r2).agent == 3);
  CHECK(book.pending() == 0);
  CHECK(book.pending(cluster_a) == 0);
}

TEST_CASE("a ticket is spent once, and one side cannot connect twice", "[relay][rendezvous]") {
  Book book;
  std::string why;
  REQUIRE(book.open("t", cluster_a, t0, why));
  CHECK_FALSE(book.open("t", cluster_b, t0, why));  // never overwritten
  CHECK(why == "ticket in use");
  REQUIRE(std::holds_alternative<Book::Parked>(book.present("t", LegSide::agent, leg(1), t0)));
  auto twice = book.present("t", LegSide::agent, leg(2), t0);
  REQUIRE(std::holds_alternative<Book::Refused>(twice));
  CHECK(*std::get<Book::Refused>(twice).leg == 2);  // handed back to be closed
  CHECK_THAT(std::get<Book::Refused>(twice).reason, Catch::Contains("already connected"));
  REQUIRE(std::holds_alternative<Book::Paired>(book.present("t", LegSide::proxy, leg(3), t0)));
  auto replay = book.present("t", LegSide::proxy, leg(4), t0);
  REQUIRE(std::holds_alternative<Book::Refused>(replay));
  CHECK_THAT(std::get<Book::Refused>(replay).reason, Catch::Contains("no rendezvous is pending"));
  CHECK(std::holds_alternative<Book::Refused>(book.present("never-issued", LegSide::agent, leg(5), t0)));
}

TEST_CASE("an expired rendezvous hands back the leg that waited", "[relay][rendezvous]") {
  Book book(RendezvousLimits{256, 10000, 30s});
  std::string why;
  REQUIRE(book.open("old", cluster_a, t0, why));
  REQUIRE(book.open("new", cluster_b, t0 + 20s, why));
  REQUIRE(book.open("paired", cluster_a, t0, why));
  REQUIRE(std::holds_alternative<Book::Parked>(book.present("old", LegSide::proxy, leg(1), t0 + 1s)));
  REQUIRE(std::holds_alternative<Book::Parked>(book.present("paired", LegSide::proxy, leg(2), t0 + 1s)));
  REQUIRE(std::holds_alternative<Book::Paired>(book.present("paired", LegSide::agent, leg(3), t0 + 2s)));
  CHECK(book.next_expiry() == t0 + 30s);

  CHECK(book.expire(t0 + 29s).empty());
  // A leg that comes after the ttl is refused even before the sweep.
  auto late = book.present("old", LegSide::agent, leg(4), t0 + 30s);
  REQUIRE(std::holds_alternative<Book::Refused>(late));
  CHECK_THAT(std::get<Book::Refused>(late).reason, Catch::Contains("expired"));

  auto gone = book.expire(t0 + 30s);
  REQUIRE(gone.size() == 1);
  CHECK(*gone[0].leg == 1);
  CHECK(gone[0].side == LegSide::proxy);
  CHECK(gone[0].cluster == cluster_a);
  CHECK(book.pending() == 1);
  CHECK(book.pending(cluster_a) == 0);
  CHECK(book.expire(t0 + 49s).empty());
  CHECK(book.expire(t0 + 50s).empty());  // "new" had no leg waiting
  CHECK(book.pending() == 0);
  CHECK_FALSE(book.next_expiry());
}

TEST_CASE("pending rendezvous are bounded per cluster and in all", "[relay][rendezvous]") {
  Book book(RendezvousLimits{2, 3, 30s});
  std::string why;
  REQUIRE(book.open("a1", cluster_a, t0, why));
  REQUIRE(book.open("a2", cluster_a, t0, why));
  CHECK_FALSE(book.open("a3", cluster_a, t0, why));
  CHECK_THAT(why, Catch::Contains("cluster has 2 rendezvous pending"));
  REQUIRE(book.open("b1", cluster_b, t0, why));  // another cluster is not held up by a busy one
  CHECK_FALSE(book.open("b2", cluster_b, t0, why));
  CHECK_THAT(why, Catch::Contains("relay has 3 rendezvous pending"));
  // A cancelled rendezvous frees its place and hands back its waiting leg.
  REQUIRE(std::holds_alternative<Book::Parked>(book.present("a1", LegSide::proxy, leg(7), t0)));
  auto c = book.cancel("a1");
  REQUIRE(c);
  CHECK(*c->leg == 7);
  CHECK_FALSE(book.cancel("a1"));
  CHECK(book.open("a3", cluster_a, t0, why));
}

TEST_CASE("pending rendezvous are bounded per client credential", "[relay][rendezvous]") {
  Book book(RendezvousLimits{10, 100, 30s, 2});
  std::string why;
  REQUIRE(book.open("c1", cluster_a, "token-1", t0, why));
  REQUIRE(book.open("c2", cluster_a, "token-1", t0, why));
  CHECK_FALSE(book.open("c3", cluster_a, "token-1", t0, why));
  CHECK_THAT(why, Catch::Contains("this client has 2 rendezvous pending"));
  // Another client of the same cluster still gets its own.
  REQUIRE(book.open("d1", cluster_a, "token-2", t0, why));
  // A paired rendezvous gives its client's place back.
  CHECK(std::holds_alternative<Book::Parked>(book.present("c1", LegSide::proxy, std::make_unique<int>(1), t0)));
  CHECK(std::holds_alternative<Book::Paired>(book.present("c1", LegSide::agent, std::make_unique<int>(2), t0)));
  REQUIRE(book.open("c3", cluster_a, "token-1", t0, why));
  // So do cancelled and expired ones.
  book.cancel("c2");
  REQUIRE(book.open("c4", cluster_a, "token-1", t0 + 10s, why));
  CHECK_FALSE(book.open("c5", cluster_a, "token-1", t0 + 10s, why));
  book.expire(t0 + 30s);  // c3 and d1 expire; c4 lives to t0 + 40s
  REQUIRE(book.open("c5", cluster_a, "token-1", t0 + 30s, why));
  CHECK(book.pending(cluster_a) == 2);
}
