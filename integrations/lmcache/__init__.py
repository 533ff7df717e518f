"""LMCache integration: a remote-storage plugin that stores LMCache's KV chunks in kvstore.

Needs the `lmcache` extra (`pip install kvstore[lmcache]`); see README "LMCache" for the config.
"""
