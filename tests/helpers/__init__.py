"""What several test modules share: config composition, the command line, fitting, the user's own modules and
networks, DDP runs. Test modules import from here, never from one another."""
