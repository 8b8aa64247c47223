"""A reference asynchronous KV connector for vLLM: runtime, metrics and storage backends."""
