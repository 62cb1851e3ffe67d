"""Content-based retrieval: choosing a FAISS layout (`plan`), building it in memory or streamed
shard by shard (`stream`), the saved index and its search (`index`), and its quality (`metrics`)."""
