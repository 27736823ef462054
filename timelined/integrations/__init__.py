"""Adapters that make timelined the session store of agent frameworks (docs/integrations.md).

Each adapter uses the client only (`timelined.client`), and imports nothing of its framework
until it is used: `import timelined.integrations.openai_agents` loads no `agents`.
"""
