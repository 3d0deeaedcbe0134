from django.apps import AppConfig


class ThreadmillConfig(AppConfig):
    """The threadmill app: its models hold the database backend's tasks.

    Each backend checks its own settings through Django's task checks (`backend.check()`);
    the deploy-only checks are registered here.
    """

    name = "threadmill"
    verbose_name = "threadmill"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from threadmill import checks  # noqa: F401  (registers the deploy checks)
