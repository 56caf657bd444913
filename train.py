"""Train S2VT on stored features and captions (`make train`)."""

from pipeline.training import main

if __name__ == "__main__":
    raise SystemExit(main())
