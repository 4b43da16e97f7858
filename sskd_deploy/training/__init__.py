"""Three-stage SSKD training: losses, pseudo-labels, the shared loop and one recipe per stage."""
