"""Process titles (`ps`, `top`) that show each process's role and what it is running."""

try:
    from setproctitle import setproctitle
except ImportError:  # optional: without it titles simply stay `python manage.py threadmill`
    setproctitle = None


def set_title(title: str) -> None:
    if setproctitle is not None:
        setproctitle(f"threadmill: {title}")
