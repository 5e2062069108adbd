"""The page's *Model* panel: which model answers, its download or load as it happens, and a picker to change it.

`build(slot)` adds the panel inside the page's `gr.Blocks` for an `app.backend.ModelSlot`. The table lists the known
UltraLong models, the demo and the model in use, each with its window, licence, size and whether it is on disk; the
box takes one of them, any Hugging Face id (owner/name) or a folder on this computer. *Use this model* opens it in
the background (downloading it first if needed) without a restart; the status line shows bytes, speed and time left
while it downloads, refreshed every second until the model is ready.
"""

from __future__ import annotations

import gradio as gr

from app import model_hub
from app.backend import ModelLoading, ModelSlot, SlotState
from app.errors import OmnibusError
from app.models_catalog import REGISTRY
from app.sharing.auth import route_of

REFRESH_S = 1.0
LOOPBACK = ("127.0.0.1", "::1", "localhost")


class Owner:
    """Who may change the model for everyone: the login named `admin` (`--admin USER`), else only the person at
    this computer with no login (a request from loopback that names this computer; never one a --share tunnel
    or a proxy forwarded, whose traffic comes from loopback too: `app.sharing.auth.route_of`). Every other session
    sees the model read-only. `loopback_trusted=False` (--share) trusts no loopback request whose route is unknown."""

    def __init__(self, admin: str | None = None, loopback_trusted: bool = True):
        self.admin, self.loopback_trusted = admin or None, loopback_trusted

    def allows(self, request) -> bool:
        user = getattr(request, "username", None) or None
        if self.admin is not None:
            return user == self.admin
        client = getattr(getattr(request, "client", None), "host", "")
        headers = [(str(k).lower().encode("latin-1"), str(v).encode("latin-1", "replace"))
                   for k, v in dict(getattr(request, "headers", None) or {}).items()]
        direct = route_of(headers, client) == "direct" if headers else self.loopback_trusted
        return user is None and client in LOOPBACK and direct

    def who(self) -> str:
        """Who may change the model, in words."""
        if self.admin is not None:
            return f"the login {self.admin}"
        return "the person who started Omnibus, at this computer with no login"


def controls(owner: Owner, request) -> tuple:
    """The picker as this session may use it: (the choice box, the *Use this model* button, the line that says who
    may change the model). Anyone else sees the model read-only, the controls off."""
    mine = owner.allows(request)
    note = "" if mine else f"The model is shown read-only: only {owner.who()} may change or download it."
    return gr.update(interactive=mine), gr.update(interactive=mine), gr.update(value=note, visible=not mine)


def status_text(state: SlotState) -> str:
    """One line of Markdown for where the model stands."""
    if state.phase == "downloading":
        p = state.download
        bar = ""
        if p is not None and p.total:
            filled = int(20 * p.done / p.total)
            bar = " `" + "█" * filled + "·" * (20 - filled) + "`"
        return f"**Downloading {state.model}**{bar} {state.message}. You can add documents meanwhile."
    if state.phase == "loading":
        return f"**Loading {state.model}** into memory…"
    if state.phase == "failed":
        return f"**Could not open {state.model}:** {state.message}"
    return f"**Model:** {state.model} is ready."


def panel_label(state: SlotState) -> str:
    """The panel's title, which says where the model stands while the panel is closed."""
    if state.phase == "ready":
        return f"Model: {state.model} (ready; open to change it)"
    return f"Model: {state.model} ({state.phase})"


def rows(slot: ModelSlot) -> list[list]:
    """The table: the known models, then the one in use if it is another."""
    return [card.row() for card in model_hub.catalogue([slot.state.model])]


def build(slot: ModelSlot, owner: Owner | None = None) -> None:
    """The panel, wired to `slot`; only `owner` may change the model. Call inside `gr.Blocks`."""
    owner = owner or Owner()

    def refresh(request: gr.Request):
        state = slot.state
        busy = state.phase in ("downloading", "loading")
        table = gr.update() if busy else rows(slot)
        # Open only while a model is missing or loading: a ready model leaves the first screen to the documents.
        panel_update = gr.update(open=state.phase != "ready", label=panel_label(state))
        return (status_text(state), table, gr.Timer(active=busy), panel_update, *controls(owner, request))

    def use(name: str, request: gr.Request):
        if not owner.allows(request):
            raise gr.Error(f"Only {owner.who()} may change the model. The model stays as it is.")
        name = (name or "").strip()
        if not name:
            raise gr.Error("Choose a model, or type a Hugging Face id or a folder.")
        try:
            model_hub.card(name)  # a name that means nothing is refused here, before the model in use is closed
            state = slot.switch(name)
        except (ModelLoading, OmnibusError) as err:
            raise gr.Error(str(err)[:1].upper() + str(err)[1:]) from err
        return status_text(state), gr.Timer(active=True)

    # Closed at first; the first tick (a second after the page opens) names the model's state in the title and
    # opens the panel if the model is not ready. (Built once at start: a state named here would go stale.)
    with gr.Accordion("Model", open=False, elem_id="model-panel") as panel:
        status = gr.Markdown(status_text(slot.state), elem_id="model-status")
        table = gr.Dataframe(headers=model_hub.CARD_HEADERS, value=rows(slot), interactive=False, wrap=True,
                             elem_id="models")
        with gr.Row():
            # Off until the first tick says this session may use them (`controls`): read-only for anyone else.
            choice = gr.Dropdown(list(REGISTRY), value=slot.state.model, allow_custom_value=True, scale=4,
                                 label="Model: one of the above, a Hugging Face id (owner/name) or a folder",
                                 elem_id="model-choice", interactive=False)
            switch = gr.Button("Use this model", scale=1, elem_id="model-use", interactive=False)
        who = gr.Markdown("", visible=False, elem_id="model-who")
        gr.Markdown(f"Downloads go to the Hugging Face cache ({model_hub.hub_cache()}; set `HF_HOME` to move it). "
                    "Changing the model closes the one in use; load your documents again afterwards.")
    timer = gr.Timer(REFRESH_S, active=True)  # outside the panel: a closed panel's contents are not on the page
    timer.tick(refresh, None, [status, table, timer, panel, choice, switch, who], api_name=False,
               show_progress="hidden", concurrency_limit=None)
    switch.click(use, choice, [status, timer], api_name="switch_model", concurrency_id="model",
                 concurrency_limit=1)
