"""`python -m service.cli`; guarded, as the rule worker pool's forkserver re-imports it."""

from service.cli import main

if __name__ == "__main__":
    main()
