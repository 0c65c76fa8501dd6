"""rewardserve as a Ray Serve application (`serve run service.rayserve.builder:app`): one
deployment per model, each replica a whole single-model rewardserve (our scheduler, cache
and HTTP app) running in-process, behind a gateway that gives Ray's proxy the same HTTP API
and in-cluster callers a DeploymentHandle. Only `builder` and `deployments` import Ray."""
