"""The deployment `mainsail up` runs when given no file (kept equal to deploy/examples/tiny.yaml
by a unit test, so the documented example and the embedded default never drift)."""

TINY_DEPLOYMENT = """\
# The smallest useful Mainsail deployment: a generated tiny Llama-style model,
# two unified workers, the embedded Redis cache and a KV-aware router.
apiVersion: mainsail.dev/v1alpha1
kind: ModelDeployment
metadata:
  name: tiny
spec:
  model:
    name: tiny-llama
    generate: llama
  engine:
    blockSize: 16
    maxModelLen: 1024
    maxNumSeqs: 32
    maxBatchedTokens: 256
  pools:
    unified:
      replicas: 2
    cache:
      maxMemory: 256Mi
  router:
    httpPort: 8000
    grpcPort: 50051
  slo:
    ttftMs: 2000
    tpotMs: 200
    classes:
      - name: interactive
        priority: 10
        ttftMs: 500
      - name: batch
        priority: 0
"""
