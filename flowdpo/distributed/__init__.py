"""The distributed data plane: rollout workers (`flowdpo worker`) and the trainer service
(`flowdpo trainer`) as separate processes that share nothing but the run's object store.

- `claims`: shard claims with renewable leases and atomic takeover;
- `worker_main`: claim -> roll out -> results + pairs, following the trainer's adapter versions;
- `trainer_main`: consume finished shards in order, train, publish adapters and progress.json.
"""
