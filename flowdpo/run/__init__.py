"""The roles of a run, one module each, sharing nothing but the run's object store:

- `prepare`: write the example shards (idempotent);
- `claims`: who rolls out which shard (atomic create, leases, takeover);
- `shard`: one shard's rollouts: the flow with a rollout at every node, pairs mined, results written;
- `worker`: the rollout worker program (`flowdpo worker`): claim, roll out, follow adapter versions;
- `trainer`: the trainer program (`flowdpo trainer`): consume shards in order, train, publish;
- `local`: `flowdpo run`, the worker's and trainer's steps in one process;
- `progress`: progress.json, the one summary every component and the operator read;
- `records`: the shape checks of progress.json and of a shard's results rows, before anything reads them
  (light enough for the operator and the report).
"""
