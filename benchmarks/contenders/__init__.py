"""One module per contender: how it builds its data and its loaders, nothing about timing."""
