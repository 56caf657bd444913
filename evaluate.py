"""Caption test videos with a trained run and score them, or score a captions file (`make eval`)."""

from pipeline.evaluation import main

if __name__ == "__main__":
    raise SystemExit(main())
