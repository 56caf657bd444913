"""Caption video files straight from disk with a trained run (`make caption VIDEO=...`)."""

from pipeline.caption_files import main

if __name__ == "__main__":
    raise SystemExit(main())
