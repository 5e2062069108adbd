"""The Gradio app: `app` lays out the page and wires events, `handlers` holds what each button does (plain Python,
tested directly), `views` the words and tables it shows, `auth` who may log in. Only this package imports gradio."""
