"""What the page (app/ui) and the API (app/server) share, so that neither imports the other: one queue for the
model and the backend that takes its turns (turnstile), who may log in (auth), which page a request came from
(origin), and adding files to a set of documents (documents: the plain-Python core the page's Workbench and MCP
both use). Nothing here imports gradio.
"""
