
from nodeagent import lazyinit as _lazyinit

# grpc's __init__ imports its asyncio API (grpc.aio, with typing_extensions); the plugin serves
# with the threaded one. Deferred: its __init__ runs when one of its names is first used
# (docs/observability.md, "Memory"). This imports grpc, which every user of this package does.
_lazyinit.defer("grpc.aio")
