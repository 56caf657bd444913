"""Generate the embedded sample dataset of synthetic captioned clips (`make sample`)."""

from pipeline.sample import main

if __name__ == "__main__":
    raise SystemExit(main())
