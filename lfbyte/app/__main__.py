"""``python -m lfbyte.app [key=value ...]``; see conf/app.yaml."""

from .server import main

if __name__ == "__main__":
    main()
