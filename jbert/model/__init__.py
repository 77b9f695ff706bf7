"""The JinaBERT model: config, encoder layers, task heads, losses and the functional params API."""
