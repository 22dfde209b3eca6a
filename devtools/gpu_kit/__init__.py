"""The GPU kit (issue 22): carries the wheels a lent GPU machine lacks in parts that each fit one device run
beside the repository, puts them back together and installs them there, and measures the service on the card.

- `prepare` (this machine, reaches PyPI): download, manifest with sha256, cut into parts, count the runs.
- `install` (GPU machine, standard library + pip only): check parts and wheels against the manifest, reassemble,
  `pip install --no-index --no-deps --target`, preflight imports.
- `measure` (GPU machine; its CPU dry run is in the test suite): export, in-process ORT vs torch, the service.
- `driver` (this machine): the device runs in order, as `run` tool calls to paste.

docs/gpu-kit.md has the sequence and what it costs.
"""
