#!/usr/bin/env bash
# The cluster's kill -9 chaos run with many seeds (CI runs two): a leader killed at a random
# moment under three acks=all producers, then the history check, once per seed.
#   bash bench/cluster_chaos.sh            # seeds 1-20
#   RAIL_CHAOS_SEEDS=1-50 bash bench/cluster_chaos.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export RAIL_CHAOS_SEEDS="${RAIL_CHAOS_SEEDS:-1-20}"
exec .venv/bin/python -m pytest -q -p no:cacheprovider \
    "tests/cluster/test_replication.py::test_acked_records_survive_kill_9_of_a_leader_under_three_producers"
