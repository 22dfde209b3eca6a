"""`qwen3-embed bench` (or `python -m devtools.bench`): an asyncio load generator for the gRPC and OpenAI
HTTP APIs (for places without ghz). Needs the `bench` extra (aiohttp, httpx).

Modules: stats (pure summary functions), workload (texts of controlled token length), clients (one
request over gRPC or HTTP, with the response checked), runner (closed and open loop), cli (the command).
"""
