"""The Gradio app: `layout` lays out the page, `events` handles what happens on it, `app` wires the two and serves
it, `handlers` holds what each button does (plain Python, tested directly) on a browser's `session`, `inputs`
checks what a page or an API call sends, `views` the words and tables it shows, `auth` who may log in. Only this
package imports gradio."""
