"""kvstore beside vLLM: a KV connector (`connector.KVStoreConnector`, loaded by vLLM through
`kv_connector_module_path`) and warm requests driven by kvstore's plans (`warm.py`).

Importing this package does not import vLLM; `connector` does.
"""
