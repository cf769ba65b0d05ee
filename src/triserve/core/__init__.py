"""The protocol-free core: model manager, scheduler and statistics. Everything speaks numpy."""
