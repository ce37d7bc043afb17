"""``lrurec bench``: the open-loop service benchmark (and a bridge to the model-level one)."""
