"""The Gradio demo: a backend (encoder, store, index), handlers (teach, predict, search) and the layout."""
