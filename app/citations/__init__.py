"""Citations the model writes (`form`: the `[3, p. 47: "quote"]` form and its streaming parser) and their
checking against the cited document and page (`check`, which finds quotes with `search`)."""
