"""Scale-out on Kafka: the ingest and detect roles and what travels between them.

ingest (:mod:`egressd.cluster.ingest`) reads raw flows and produces interval partials keyed
by group; detect (:mod:`egressd.cluster.detect`) runs one engine per partials partition with
its state saved per partition. See docs/scaling.md.
"""
