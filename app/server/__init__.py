"""Omnibus as a server for other tools: an OpenAI-compatible API (`openai_api`) and MCP tools (`mcp_tools`) over
the local engine, mounted beside the Gradio app or served alone (`serve`). Nothing here imports gradio."""
