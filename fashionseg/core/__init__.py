"""The bottom layer: errors, config composition and checks, photo IO, a network's heads, tracking set-up."""
