"""`kvstore proxy`: an OpenAI- and Anthropic-compatible HTTP proxy in front of an engine that turns
chat traffic into kvstore hints (app.py; identify.py, answers.py, tracker.py, tagging.py, warm.py)."""
