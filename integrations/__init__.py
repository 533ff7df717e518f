"""Engine-side and agent-framework integrations (installed as kvstore.integrations): lmcache/ (the
LMCache remote-storage plugin), langgraph (LangGraph / LangChain callbacks), openai_agents (OpenAI
Agents SDK run hooks)."""
