"""Method ``cpews``: CPEWS (contextual prototypes, Shao et al.) from region tags. No Qt."""
