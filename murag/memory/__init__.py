"""Global memory for MuRAG's fixed-retrieval stage (paper §3.4): host-side MIPS."""
from murag.memory.exact import exact_search
from murag.memory.exact import merge_topk
from murag.memory.index import digest_arrays
from murag.memory.index import FingerprintMismatchError
from murag.memory.index import IndexConfig
from murag.memory.index import IndexCorruptedError
from murag.memory.index import make_fingerprint
from murag.memory.index import MemoryIndex
from murag.memory.sharded import ShardedIndex
