"""Extract CNN features of every clip in a folder into an HDF5 store (`make features`)."""

from pipeline.features import main

if __name__ == "__main__":
    raise SystemExit(main())
