"""A discrete-event simulator of p2pkg at internet scale (issue 13).

The decisions are the product's: a download's spans are planned by
:class:`p2pkg.core.schedule.Scheduler` and its peers ranked, measured and
banned by :class:`p2pkg.core.peers.PeerBook`, driven here by simulated time
and flow-level transfers instead of sockets (:mod:`netsim.sim.fetch`); DHT
lookups are :class:`p2pkg.core.lookup.Lookup` over simulated RPCs, records
:class:`p2pkg.core.dht_records.ProviderStore`, announcement rounds
:class:`p2pkg.core.announce.AnnouncePlan` (:mod:`netsim.sim.dht`,
:mod:`netsim.sim.dht_roles`). What is simulated is the network
(:mod:`netsim.sim.network`: exact max-min fair sharing of each node's up-
and downlink, solved incrementally; a latency per region pair), the DHT's
routing tables, and the world around the code (:mod:`netsim.sim.world`:
origin, seeds with upload budgets subscribed in a tree
(:mod:`netsim.sim.propagation`), churn, outages and malicious peers, sites
behind caches, CDN edges, clients in regions, new releases).

Why our own heap-based event loop rather than SimPy: the product code is
not written as simulation processes and must not be (it is sans-IO: values
and ``now`` in, decisions out), so SimPy's generator processes would only
wrap callbacks we need anyway; a ~60-line loop is deterministic by
construction (ties broken by insertion order), has no dependency, and is
faster for millions of events.
"""
