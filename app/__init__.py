"""Omnibus: whole documents as one context for a long-context model, no retrieval.

Start at `app.protocol` (what a backend must do) and `app.ui.handlers` (what the app's buttons do). Subsystems
have folders: `engine` (the local GPU/CPU engine, the only torch user), `store` (saved corpora), `citations`,
`ui`; the modules beside them (`backend`, `remote`, `planner`, `prompt`, `models_catalog`, `cli`, `errors`)
are shared by several. The README's Layout section says why.
"""
